"""
The metadata database's life: SQLite inside C{cache.dir}, opened on one
dedicated thread that owns the connection (so the reactor never waits on
the disk for it), its schema checked, and closed.

A database that is corrupt (not SQLite, malformed, failing C{PRAGMA
quick_check}, or of a schema this code cannot migrate) can be moved aside
and replaced by a new, empty one (L{Database.open_now}): the files are the
truth, so the janitor's recovery adopts them again and tags are resolved
upstream anew.  Every failure is a L{MetadataUnavailable} that says which
database and why: locked (L{MetadataLocked}), corrupt (L{MetadataCorrupt}),
closed, or impossible to create.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = [
    "BLOB_TABLES",
    "BUSY_TIMEOUT",
    "Database",
    "MetadataCorrupt",
    "MetadataLocked",
    "MetadataUnavailable",
    "Rebuilt",
    "blob_table",
]

T = TypeVar("T")

BUSY_TIMEOUT = 5.0
"""
Seconds a statement waits for a lock another connection holds before it
fails with L{MetadataLocked}; the daemon's own transactions are short.
"""

BUSY_RETRIES = 1
"""
Times work that found the database locked by another process (past
L{BUSY_TIMEOUT}) runs again before it fails with L{MetadataLocked}: several
worker processes write to one database.  Once: a lock held past 10 s is
not another worker's write (they take milliseconds) but a stuck process,
and a command (C{ocicache gc}) says so rather than wait on.
"""

BUSY_BACKOFF = 0.05
"""Seconds before the first retry of locked work; the next ones wait longer."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    checked_at REAL NOT NULL,
    PRIMARY KEY (upstream, repo, tag)
);
CREATE TABLE IF NOT EXISTS manifests (
    digest TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bucket_blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS git_entries (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS file_entries (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bucket_git_entries (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bucket_file_entries (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS manifest_children (
    parent TEXT NOT NULL,
    child TEXT NOT NULL,
    PRIMARY KEY (parent, child)
);
CREATE TABLE IF NOT EXISTS sources (
    digest TEXT NOT NULL,
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    PRIMARY KEY (digest, upstream, repo)
);
CREATE TABLE IF NOT EXISTS manifest_blobs (
    manifest TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (manifest, blob)
);
CREATE TABLE IF NOT EXISTS pins (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    reference TEXT NOT NULL,
    platforms TEXT NOT NULL,
    digest TEXT NOT NULL,
    pinned_at REAL NOT NULL,
    PRIMARY KEY (upstream, repo, reference)
);
CREATE TABLE IF NOT EXISTS pin_manifests (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    reference TEXT NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (upstream, repo, reference, manifest)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER
);
CREATE TABLE IF NOT EXISTS negatives (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS negatives_expires ON negatives (expires);
CREATE TABLE IF NOT EXISTS quota (
    upstream TEXT PRIMARY KEY,
    pulls_made INTEGER NOT NULL DEFAULT 0,
    pulls_saved INTEGER NOT NULL DEFAULT 0,
    ratelimit_limit INTEGER,
    ratelimit_remaining INTEGER,
    ratelimit_window REAL,
    ratelimit_source TEXT,
    observed_at REAL,
    limited_until REAL
);
"""

BLOB_TABLES = frozenset({"blobs", "bucket_blobs", "git_entries", "file_entries", "bucket_git_entries",
                         "bucket_file_entries"})
"""
Where the rows of stored entries live: C{blobs} for the blob files on this
disk, C{bucket_blobs} for the objects in an S3 bucket (the S3 backend's
index), and one table per other kind of entry (git responses, files of
package repositories), named by the hash their front-end gives them,
with its C{bucket_} twin for its objects in the S3 bucket.
"""

LOCAL_TABLES = frozenset({"blobs", "git_entries", "file_entries"})
"""The tables of L{BLOB_TABLES} whose entries are files on this disk, in its budget."""

CHANGES_SCHEMA = "".join(
    f"""
CREATE TRIGGER IF NOT EXISTS {table}_added AFTER INSERT ON {table}
BEGIN INSERT INTO changes (tbl, digest, size) VALUES ('{table}', NEW.digest, NEW.size); END;
CREATE TRIGGER IF NOT EXISTS {table}_resized AFTER UPDATE OF size ON {table} WHEN NEW.size != OLD.size
BEGIN INSERT INTO changes (tbl, digest, size) VALUES ('{table}', NEW.digest, NEW.size); END;
CREATE TRIGGER IF NOT EXISTS {table}_removed AFTER DELETE ON {table}
BEGIN INSERT INTO changes (tbl, digest, size) VALUES ('{table}', OLD.digest, NULL); END;
"""
    for table in sorted(LOCAL_TABLES)
)
"""
Every row added to, resized in or removed from a table of entries stored on
this disk, in order, written by SQLite itself whichever code (or process)
made the change: the log each process on a store reads to keep its
budget's books equal to the shared tables (L{ocicache._storage._budget}),
and prunes.  C{size} is C{NULL} for a removal.  (The bucket's tables are
not logged: no budget of this disk counts them.)
"""

# SQLite's primary result codes (https://sqlite.org/rescode.html).
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_LOCKED_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED

_MAGIC = b"SQLite format 3\x00"

_SIDE_FILES = ("-wal", "-shm", "-journal")
"""What SQLite keeps beside the database; moved aside with it."""


class MetadataUnavailable(Exception):
    """
    The metadata database cannot be used: it is closed, or cannot be
    opened or created.  The message names the database and the reason.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class MetadataCorrupt(MetadataUnavailable):
    """The database is not a sound ocicache metadata database."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, f"the metadata database {path} is corrupt: {reason}")
        self.reason = reason


class MetadataLocked(MetadataUnavailable):
    """Another process holds a lock on the database for too long."""


@frozen
class Rebuilt:
    """A corrupt database was moved to C{moved_to} and a new one created."""

    reason: str
    moved_to: str


class _DatabaseThread(ThreadPool):
    """
    The one thread that runs SQLite.  A daemon thread: one blocked in
    SQLite (on a lock, a slow disk) must not keep the process alive once
    the main thread is done.  SQLite survives the process ending in the
    middle of a transaction, as it survives a crash.
    """

    @staticmethod
    def threadFactory(*args: Any, **kwargs: Any) -> threading.Thread:  # type: ignore[override]
        return threading.Thread(*args, daemon=True, **kwargs)


def _expected_columns() -> dict[str, dict[str, int]]:
    """Each table of L{SCHEMA}: column name to its place in the primary key."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return {
            table: {row[1]: row[5] for row in db.execute(f"PRAGMA table_info({table})")}
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        }
    finally:
        db.close()


_EXPECTED = _expected_columns()


_SCHEMA_OBJECTS = re.compile(r"CREATE (?:TABLE|INDEX|TRIGGER) IF NOT EXISTS (\w+)")


def _schema_complete(db: sqlite3.Connection) -> bool:
    """Whether every table, index and trigger of the schema is there already (a read)."""
    wanted = set(_SCHEMA_OBJECTS.findall(SCHEMA + CHANGES_SCHEMA))
    present = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    return wanted <= present


def _schema_problem(db: sqlite3.Connection) -> str | None:
    """
    Why the tables that exist cannot serve this code, or C{None}.  Missing
    tables are not a problem: L{SCHEMA} creates them (the one migration).
    """
    for table, expected in _EXPECTED.items():
        rows = db.execute(f"PRAGMA table_info({table})").fetchall()
        if not rows:
            continue
        actual = {row[1]: row for row in rows}
        for column, key in expected.items():
            if column not in actual:
                return f"wrong schema: table {table} has no column {column}"
            if actual[column][5] != key:
                return f"wrong schema: table {table} has another primary key"
        for name, row in actual.items():
            # cid, name, type, notnull, default, pk
            if name not in expected and row[3] and row[4] is None:
                return f"wrong schema: table {table} has a required column {name} this version cannot fill"
    return None


def blob_table(table: str) -> str:
    """A blob table's name, checked: it goes into SQL text, not a parameter."""
    if table not in BLOB_TABLES:
        raise ValueError(f"no blob table {table!r}")
    return table


def _looks_like_sqlite(path: str) -> bool:
    """
    Whether C{path} is missing, empty (SQLite makes a database of both) or
    starts with the SQLite header string (https://sqlite.org/fileformat.html
    section 1.3.1).
    """
    try:
        with open(path, "rb") as f:
            header = f.read(len(_MAGIC))
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        return True  # not ours to judge: SQLite cannot open it, and says so
    return header in (b"", _MAGIC)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("***")]
    return lines[0] if lines else text.strip()


def _os_reason(path: str) -> str | None:
    """
    Why the operating system will not let us write the database or create
    its side files, as its error text (C{Read-only file system},
    C{Permission denied}), or C{None}.  Call it before connecting: closing
    another descriptor of an open database drops SQLite's POSIX locks.
    """
    try:
        if os.path.exists(path):
            os.close(os.open(path, os.O_RDWR))
        fd, probe = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".metadata-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror
    return None


def _unavailable(path: str, error: sqlite3.Error) -> MetadataUnavailable:
    """The domain error for a SQLite error on the database at C{path}."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    if code in _CORRUPT_CODES:
        return MetadataCorrupt(path, str(error))
    if code in _LOCKED_CODES:
        return MetadataLocked(path, f"the metadata database {path} is locked by another process ({error})")
    return MetadataUnavailable(path, f"the metadata database {path} is unusable: {error}")


class _OpenTurn:
    """
    An exclusive C{flock(2)} on a file beside the database, held while a
    process opens (and perhaps rebuilds) it; the kernel lets go if the
    process dies.  Opening it is said as the other failures to open are.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> None:
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise MetadataUnavailable(self._path, f"cannot create {self._path}: {e.strerror}") from None
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Database:
    """
    The database's life: opened (rebuilt when corrupt) on its own thread,
    which owns the connection, and closed; L{_with_db} runs work on that
    thread.  L{ocicache._storage._metadata.Metadata} holds the queries.
    """

    def __init__(self, path: str, reactor: IReactorThreads, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self._reactor = reactor
        self._busy_timeout = busy_timeout
        self._pool = _DatabaseThread(minthreads=1, maxthreads=1, name="ocicache-metadata")
        self._db: sqlite3.Connection | None = None

    # -- life cycle

    def open_now(self, rebuild: bool = False) -> Rebuilt | None:
        """
        Open the database in the calling thread, creating it if need be,
        and start the database thread.  For start-up, before the reactor
        runs (twistd's C{startService}): nothing else waits meanwhile.

        A corrupt database raises L{MetadataCorrupt}, or, with C{rebuild},
        is moved aside (with its C{-wal}/C{-shm} files) to
        C{<path>.corrupt-<UTC time>} and replaced by a new one: then the
        L{Rebuilt} is returned.  A locked database raises L{MetadataLocked},
        one that cannot be opened or created L{MetadataUnavailable}; then
        no thread is left running.
        """
        rebuilt = self._open(rebuild)
        self._pool.start()
        return rebuilt

    def open(self, rebuild: bool = False) -> Deferred[Rebuilt | None]:
        """
        L{open_now}, on the database thread.  On failure the thread is
        stopped again.
        """
        self._pool.start()

        def stop_thread(failure: Any) -> Any:
            self._pool.stop()
            return failure

        return self._run(self._open, rebuild).addErrback(stop_thread)

    def _open(self, rebuild: bool) -> Rebuilt | None:
        directory = os.path.dirname(self.path)
        self._make_directory(directory)
        # Before SQLite touches it: a read-only directory or file is said
        # here, as the system says it, not found out on the first write.
        why = _os_reason(self.path)
        if why is not None:
            raise MetadataUnavailable(self.path, f"cannot write the metadata database {self.path}: {why}")
        # Every process on the store opens the database in turn: two
        # finding it corrupt at once must not both move it aside (the
        # second would move the first one's new database).  The second
        # finds the new one sound.
        with _OpenTurn(self.path + ".lock"):
            return self._open_in_turn(rebuild)

    def _make_directory(self, directory: str) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            why = e.strerror
            if os.path.lexists(directory) and not os.path.isdir(directory):
                why = f"{directory}: {os.strerror(errno.ENOTDIR)}"
            raise MetadataUnavailable(self.path, f"cannot create the metadata database {self.path}: {why}") from None

    def _open_in_turn(self, rebuild: bool) -> Rebuilt | None:
        try:
            # Not SQLite at all: said before SQLite opens it, which would
            # delete a -wal file beside it on close.
            if not _looks_like_sqlite(self.path):
                raise MetadataCorrupt(self.path, "not an SQLite database")
            self._db = self._connect()
            return None
        except MetadataCorrupt as e:
            if not rebuild:
                raise
            reason = e.reason
        moved_to = self._move_aside()
        self._db = self._connect()
        return Rebuilt(reason, moved_to)

    def _connect(self) -> sqlite3.Connection:
        """
        Connect and check: sound (C{quick_check}), in WAL mode, of our
        schema.
        """
        try:
            db = sqlite3.connect(self.path, timeout=self._busy_timeout, check_same_thread=False,
                                 isolation_level=None)
        except sqlite3.Error as e:
            raise self._cannot_open(e) from None
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise MetadataCorrupt(self.path, f"quick_check: {_first_line(str(problems[0]))}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            problem = _schema_problem(db)
            if problem is not None:
                raise MetadataCorrupt(self.path, problem)
            if not _schema_complete(db):
                # One transaction, which waits for another process creating
                # or migrating it at the same instant (the busy timeout).  A
                # complete schema takes no write lock: a reader (ocicache
                # verify) opens while another process writes.
                db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}{CHANGES_SCHEMA}COMMIT;")
        except sqlite3.Error as e:
            db.close()
            raise self._cannot_open(e) from None
        except BaseException:
            db.close()
            raise
        return db

    def _cannot_open(self, error: sqlite3.Error) -> MetadataUnavailable:
        unavailable = _unavailable(self.path, error)
        if type(unavailable) is MetadataUnavailable:
            return MetadataUnavailable(self.path, f"cannot open or create the metadata database {self.path}: {error}")
        return unavailable

    def _move_aside(self) -> str:
        """
        Rename the database and its side files to C{<path>.corrupt-<UTC
        time>}; return the new name of the database.  The side files go
        first: a stale C{-wal} next to the new database would be replayed
        into it.
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = f"{self.path}.corrupt-{stamp}"
        count = 1
        while any(os.path.lexists(target + suffix) for suffix in ("", *_SIDE_FILES)):
            count += 1
            target = f"{self.path}.corrupt-{stamp}.{count}"
        try:
            for suffix in (*_SIDE_FILES, ""):
                if os.path.lexists(self.path + suffix):
                    os.rename(self.path + suffix, target + suffix)
        except OSError as e:
            raise MetadataUnavailable(
                self.path, f"the metadata database {self.path} is corrupt and cannot be moved aside: {e.strerror}"
            ) from None
        return target

    def close(self) -> Deferred[None]:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def stop_thread(result: object) -> object:
            self._pool.stop()
            return result

        if not self._pool.started:
            return succeed(None)
        return self._run(close).addBoth(stop_thread)

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def _run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _closed(self) -> MetadataUnavailable:
        return MetadataUnavailable(self.path, f"the metadata database {self.path} is not open")

    def _with_db(self, work: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        """
        Run C{work(connection)} on the database thread; SQLite's errors
        become L{MetadataUnavailable}.  Fails at once when not open (the
        thread may not even run).
        """
        if self._db is None:
            return fail(self._closed())

        def guarded() -> T:
            for attempt in range(BUSY_RETRIES + 1):
                db = self._db
                if db is None:
                    raise self._closed()
                try:
                    return work(db)
                except sqlite3.Error as e:
                    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
                    if code not in _LOCKED_CODES or attempt == BUSY_RETRIES:
                        raise _unavailable(self.path, e) from e
                # Another process held the write lock past the busy
                # timeout (or a read snapshot went stale): the work is one
                # transaction, rolled back, so it runs again whole.  On
                # the database's own thread: the reactor does not wait.
                time.sleep(BUSY_BACKOFF * (attempt + 1))
            raise AssertionError("unreachable")

        return self._run(guarded)

    def read(self, work: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        """
        Run a query function of another module (L{ocicache._storage._catalog})
        on the database thread, as this class's own methods run theirs.
        """
        return self._with_db(work)

    def _execute(self, sql: str, *args: Any) -> Deferred[list[tuple[Any, ...]]]:
        return self._with_db(lambda db: db.execute(sql, args).fetchall())

    def _executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> Deferred[None]:
        rows = list(rows)

        def executemany(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql, rows)

        return self._with_db(executemany)
