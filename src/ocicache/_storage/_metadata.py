"""
What ocicache knows about the bytes it stores: tag mappings, manifest media
types, blob sizes and last access times, in SQLite inside C{cache.dir}.

The files under C{blobs/} are the truth for blob bytes; this database only
describes them.  All SQLite work runs on one dedicated thread, which owns
the connection, so the reactor never waits on the disk for it.

A database that is corrupt (not SQLite, malformed, failing C{PRAGMA
quick_check}, or of a schema this code cannot migrate) can be moved aside
and replaced by a new, empty one (L{Metadata.open_now}): the files are the
truth, so the janitor's recovery adopts them again and tags are resolved
upstream anew.  Every failure is a L{MetadataUnavailable} that says which
database and why: locked (L{MetadataLocked}), corrupt (L{MetadataCorrupt}),
closed, or impossible to create.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = [
    "BLOB_TABLES",
    "BUSY_TIMEOUT",
    "BlobRow",
    "Metadata",
    "MetadataCorrupt",
    "MetadataLocked",
    "MetadataUnavailable",
    "PinRow",
    "QuotaRow",
    "QuotaValues",
    "Rebuilt",
    "TagRow",
]

T = TypeVar("T")

BUSY_TIMEOUT = 5.0
"""
Seconds a statement waits for a lock another connection holds before it
fails with L{MetadataLocked}; the daemon's own transactions are short.
"""

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

BLOB_TABLES = frozenset({"blobs", "bucket_blobs", "git_entries", "file_entries"})
"""
Where the rows of stored entries live: C{blobs} for the blob files on this
disk, C{bucket_blobs} for the objects in an S3 bucket (the S3 backend's
index), and one table per other kind of entry (git responses, files of
package repositories), named by the hash their front-end gives them.
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


def _blob_table(table: str) -> str:
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


@frozen
class TagRow:
    digest: str
    checked_at: float


@frozen
class PinRow:
    """
    A pin: C{reference} (a tag, followed as it moves, or a digest) of
    C{upstream}/C{repo}, for C{platforms} (comma-separated), last resolved
    to C{digest}; C{size} is the declared bytes of the blobs it holds.
    """

    upstream: str
    repo: str
    reference: str
    platforms: str
    digest: str
    pinned_at: float
    size: int


@frozen
class QuotaRow:
    """One upstream's pull-equivalents and the rate-limit values it last sent."""

    upstream: str
    pulls_made: int
    pulls_saved: int
    limit: int | None
    remaining: int | None
    window: float | None
    source: str | None
    observed_at: float | None
    limited_until: float | None


class QuotaValues(Protocol):
    """The rate-limit values kept (the upstream client's C{Quota})."""

    @property
    def limit(self) -> int | None: ...
    @property
    def remaining(self) -> int | None: ...
    @property
    def window(self) -> float | None: ...
    @property
    def source(self) -> str | None: ...
    @property
    def observed_at(self) -> float | None: ...
    @property
    def limited_until(self) -> float | None: ...


@frozen
class BlobRow:
    digest: str
    size: int
    created_at: float
    last_access: float
    hits: int


class Metadata:
    """
    The metadata database.  Every method but L{open_now} returns a
    L{Deferred} (or is a coroutine) and runs on the database thread; a
    failure is a L{MetadataUnavailable}.
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
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            why = e.strerror
            if os.path.lexists(directory) and not os.path.isdir(directory):
                why = f"{directory}: {os.strerror(errno.ENOTDIR)}"
            raise MetadataUnavailable(self.path, f"cannot create the metadata database {self.path}: {why}") from None
        # Before SQLite touches it: a read-only directory or file is said
        # here, as the system says it, not found out on the first write.
        why = _os_reason(self.path)
        if why is not None:
            raise MetadataUnavailable(self.path, f"cannot write the metadata database {self.path}: {why}")
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
            db.executescript(SCHEMA)
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
            db = self._db
            if db is None:
                raise self._closed()
            try:
                return work(db)
            except sqlite3.Error as e:
                raise _unavailable(self.path, e) from e

        return self._run(guarded)

    def _execute(self, sql: str, *args: Any) -> Deferred[list[tuple[Any, ...]]]:
        return self._with_db(lambda db: db.execute(sql, args).fetchall())

    def _executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> Deferred[None]:
        rows = list(rows)

        def executemany(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.executemany(sql, rows)

        return self._with_db(executemany)

    # -- tags

    async def tag(self, upstream: str, repo: str, tag: str) -> TagRow | None:
        rows = await self._execute(
            "SELECT digest, checked_at FROM tags WHERE upstream=? AND repo=? AND tag=?",
            upstream, repo, tag,
        )
        return TagRow(*rows[0]) if rows else None

    def put_tag(self, upstream: str, repo: str, tag: str, digest: str, checked_at: float) -> Deferred[Any]:
        return self._execute(
            "INSERT INTO tags (upstream, repo, tag, digest, checked_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (upstream, repo, tag) DO UPDATE SET digest=excluded.digest,"
            " checked_at=excluded.checked_at",
            upstream, repo, tag, digest, checked_at,
        )

    async def expire_tags(self, before: float) -> int:
        """
        Drop tag rows last revalidated before C{before}; return how many.
        """

        return await self._with_db(
            lambda db: db.execute("DELETE FROM tags WHERE checked_at < ?", (before,)).rowcount
        )

    def delete_tag(self, upstream: str, repo: str, tag: str) -> Deferred[Any]:
        return self._execute(
            "DELETE FROM tags WHERE upstream=? AND repo=? AND tag=?", upstream, repo, tag
        )

    # -- manifests

    async def manifest_media_type(self, digest: str) -> str | None:
        rows = await self._execute("SELECT media_type FROM manifests WHERE digest=?", digest)
        return str(rows[0][0]) if rows else None

    def put_manifest(self, digest: str, media_type: str, size: int, now: float) -> Deferred[Any]:
        return self._execute(
            "INSERT INTO manifests (digest, media_type, size, created_at, last_access)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET"
            " last_access=excluded.last_access",
            digest, media_type, size, now, now,
        )

    def delete_manifest(self, digest: str) -> Deferred[Any]:
        return self._execute("DELETE FROM manifests WHERE digest=?", digest)

    def put_children(self, parent: str, children: Iterable[str]) -> Deferred[None]:
        """An index or manifest list and the manifests it refers to."""
        return self._executemany(
            "INSERT OR IGNORE INTO manifest_children (parent, child) VALUES (?, ?)",
            ((parent, child) for child in children),
        )

    def touch_manifests(self, accesses: dict[str, float]) -> Deferred[None]:
        """Record a batch of manifest reads: digest to last access."""
        return self._executemany(
            "UPDATE manifests SET last_access=max(last_access, ?) WHERE digest=?",
            ((when, digest) for digest, when in accesses.items()),
        )

    async def unreferenced_manifests(self, before: float) -> list[str]:
        """
        Manifests last read before C{before} that no tag resolves to and no
        stored index or manifest list refers to: nothing pulls them by name
        any more.  A child becomes one only once its index is gone.
        """
        rows = await self._execute(
            "SELECT digest FROM manifests AS m WHERE m.last_access < ?"
            " AND NOT EXISTS (SELECT 1 FROM tags AS t WHERE t.digest = m.digest)"
            " AND NOT EXISTS (SELECT 1 FROM pin_manifests AS p WHERE p.manifest = m.digest)"
            " AND NOT EXISTS (SELECT 1 FROM manifest_children AS c JOIN manifests AS p ON p.digest = c.parent"
            " WHERE c.child = m.digest)",
            before,
        )
        return [str(row[0]) for row in rows]

    # -- blobs

    def put_blob(self, digest: str, size: int, now: float, table: str = "blobs") -> Deferred[Any]:
        return self._execute(
            f"INSERT INTO {_blob_table(table)} (digest, size, created_at, last_access) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (digest) DO UPDATE SET size=excluded.size",
            digest, size, now, now,
        )

    def touch_blobs(self, accesses: dict[str, tuple[float, int]], table: str = "blobs") -> Deferred[None]:
        """
        Record a batch of accesses: digest to (last access, new hits).
        """
        return self._executemany(
            f"UPDATE {_blob_table(table)} SET last_access=max(last_access, ?), hits=hits+? WHERE digest=?",
            ((when, hits, digest) for digest, (when, hits) in accesses.items()),
        )

    def delete_blobs(self, digests: Iterable[str], table: str = "blobs") -> Deferred[None]:
        """
        Forget evicted or expired blobs, and the access proofs for them: a
        repository proves it again (one upstream HEAD) if the blob comes
        back, and the C{sources} table does not grow without end.  A blob
        leaving only this disk, while the bucket still has it
        (C{table="blobs"} beside a C{bucket_blobs} row), keeps its proofs.
        """
        rows = [(digest,) for digest in digests]
        table = _blob_table(table)
        other = "bucket_blobs" if table == "blobs" else "blobs"

        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.executemany(f"DELETE FROM {table} WHERE digest=?", rows)
                db.executemany(
                    f"DELETE FROM sources WHERE digest=? AND NOT EXISTS"
                    f" (SELECT 1 FROM {other} WHERE {other}.digest = sources.digest)", rows)

        return self._with_db(delete)

    async def blobs(self, table: str = "blobs") -> list[BlobRow]:
        rows = await self._execute(
            f"SELECT digest, size, created_at, last_access, hits FROM {_blob_table(table)}"
        )
        return [BlobRow(*row) for row in rows]

    async def manifest_digests(self) -> list[str]:
        return [str(row[0]) for row in await self._execute("SELECT digest FROM manifests")]

    def forget(self, kind: str, digests: list[str]) -> Deferred[None]:
        """
        Drop every row about C{digests} of C{kind} (C{"blobs"} or
        C{"manifests"}): they are gone and will be fetched again.
        """

        table = {"blobs": "blobs", "manifests": "manifests"}[kind]

        def forget(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                for digest in digests:
                    db.execute(f"DELETE FROM {table} WHERE digest=?", (digest,))
                    db.execute("DELETE FROM manifest_children WHERE parent=?", (digest,))
                    db.execute("DELETE FROM manifest_blobs WHERE manifest=?", (digest,))
                    db.execute("DELETE FROM sources WHERE digest=?", (digest,))
                    db.execute("DELETE FROM tags WHERE digest=?", (digest,))

        return self._with_db(forget)

    async def summary(self, top: int = 10) -> dict[str, Any]:
        """
        Tag count, the biggest repositories by blob bytes, and the oldest
        entry's creation time, for C{ocicache stats}.
        """

        def summary(db: sqlite3.Connection) -> dict[str, Any]:
            tags = db.execute("SELECT count(*) FROM tags").fetchone()[0]
            repositories = [
                {"upstream": upstream, "repo": repo, "bytes": size, "blobs": count}
                for upstream, repo, size, count in db.execute(
                    "SELECT s.upstream, s.repo, sum(b.size), count(*) FROM sources s"
                    " JOIN blobs b ON b.digest = s.digest GROUP BY s.upstream, s.repo"
                    " ORDER BY sum(b.size) DESC LIMIT ?", (top,))
            ]
            oldest = db.execute(
                "SELECT min(t) FROM (SELECT min(created_at) AS t FROM blobs"
                " UNION ALL SELECT min(created_at) FROM manifests)"
            ).fetchone()[0]
            return {"tags": tags, "repositories": repositories, "oldest": oldest}

        return await self._with_db(summary)

    # -- each upstream's pull quota, for ocicache stats

    def add_quota(self, upstream: str, made: int, saved: int, quota: QuotaValues) -> Deferred[Any]:
        """
        Add C{made} and C{saved} pull-equivalents to C{upstream}'s totals,
        and keep the rate-limit values it last sent.
        """
        return self._execute(
            "INSERT INTO quota (upstream, pulls_made, pulls_saved, ratelimit_limit, ratelimit_remaining,"
            " ratelimit_window, ratelimit_source, observed_at, limited_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (upstream) DO UPDATE SET pulls_made = pulls_made + excluded.pulls_made,"
            " pulls_saved = pulls_saved + excluded.pulls_saved,"
            " ratelimit_limit = coalesce(excluded.ratelimit_limit, ratelimit_limit),"
            " ratelimit_remaining = coalesce(excluded.ratelimit_remaining, ratelimit_remaining),"
            " ratelimit_window = coalesce(excluded.ratelimit_window, ratelimit_window),"
            " ratelimit_source = coalesce(excluded.ratelimit_source, ratelimit_source),"
            " observed_at = coalesce(excluded.observed_at, observed_at),"
            " limited_until = coalesce(excluded.limited_until, limited_until)",
            upstream, made, saved, quota.limit, quota.remaining, quota.window, quota.source,
            quota.observed_at, quota.limited_until,
        )

    async def quota(self) -> list[QuotaRow]:
        """Every upstream's pull-equivalents and last rate-limit values, by name."""
        rows = await self._execute(
            "SELECT upstream, pulls_made, pulls_saved, ratelimit_limit, ratelimit_remaining, ratelimit_window,"
            " ratelimit_source, observed_at, limited_until FROM quota ORDER BY upstream"
        )
        return [QuotaRow(*row) for row in rows]

    # -- which upstream has shown us which blob

    async def has_source(self, digest: str, upstream: str, repo: str) -> bool:
        rows = await self._execute(
            "SELECT 1 FROM sources WHERE digest=? AND upstream=? AND repo=?",
            digest, upstream, repo,
        )
        return bool(rows)

    def put_source(self, digest: str, upstream: str, repo: str) -> Deferred[Any]:
        return self._execute(
            "INSERT OR IGNORE INTO sources (digest, upstream, repo) VALUES (?, ?, ?)",
            digest, upstream, repo,
        )

    # -- what an image manifest references, and the pins that hold closures

    def put_manifest_blobs(self, manifest: str, blobs: Iterable[tuple[str, int]]) -> Deferred[None]:
        """An image manifest and the blobs (config, layers) it refers to, with their declared sizes."""
        return self._executemany(
            "INSERT OR IGNORE INTO manifest_blobs (manifest, blob, size) VALUES (?, ?, ?)",
            ((manifest, blob, size) for blob, size in blobs),
        )

    def put_pin(self, upstream: str, repo: str, reference: str, platforms: str, digest: str,
                manifests: Iterable[str], now: float) -> Deferred[None]:
        """
        Pin C{reference}, resolved to C{digest}, holding C{manifests} (the
        top manifest and the platforms' ones): replaces what the pin held
        before, in one transaction, so a pin that follows its tag releases
        the old closure as it takes the new one.
        """
        members = [(upstream, repo, reference, manifest) for manifest in manifests]

        def put(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.execute(
                    "INSERT INTO pins (upstream, repo, reference, platforms, digest, pinned_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (upstream, repo, reference) DO UPDATE SET"
                    " platforms=excluded.platforms, digest=excluded.digest",
                    (upstream, repo, reference, platforms, digest, now))
                db.execute("DELETE FROM pin_manifests WHERE upstream=? AND repo=? AND reference=?",
                           (upstream, repo, reference))
                db.executemany("INSERT OR IGNORE INTO pin_manifests (upstream, repo, reference, manifest)"
                               " VALUES (?, ?, ?, ?)", members)

        return self._with_db(put)

    def delete_pin(self, upstream: str, repo: str, reference: str) -> Deferred[bool]:
        """Release a pin; C{True} if there was one."""

        def delete(db: sqlite3.Connection) -> bool:
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM pin_manifests WHERE upstream=? AND repo=? AND reference=?",
                           (upstream, repo, reference))
                return db.execute("DELETE FROM pins WHERE upstream=? AND repo=? AND reference=?",
                                  (upstream, repo, reference)).rowcount > 0

        return self._with_db(delete)

    async def pins(self) -> list[PinRow]:
        rows = await self._execute(
            "SELECT p.upstream, p.repo, p.reference, p.platforms, p.digest, p.pinned_at,"
            " (SELECT coalesce(sum(size), 0) FROM (SELECT DISTINCT b.blob, b.size FROM pin_manifests AS m"
            "  JOIN manifest_blobs AS b ON b.manifest = m.manifest WHERE m.upstream = p.upstream"
            "  AND m.repo = p.repo AND m.reference = p.reference))"
            " FROM pins AS p ORDER BY p.upstream, p.repo, p.reference"
        )
        return [PinRow(*row) for row in rows]

    async def pin_missing(self, upstream: str, repo: str, reference: str) -> int:
        """How many blobs the pin holds that the store does not (a fetch that failed, or was not kept)."""
        rows = await self._execute(
            "SELECT count(DISTINCT b.blob) FROM pin_manifests AS m JOIN manifest_blobs AS b"
            " ON b.manifest = m.manifest WHERE m.upstream = ? AND m.repo = ? AND m.reference = ?"
            " AND NOT EXISTS (SELECT 1 FROM blobs WHERE blobs.digest = b.blob)",
            upstream, repo, reference,
        )
        return int(rows[0][0])

    async def pinned_blobs(self, excluding: tuple[str, str, str] | None = None) -> dict[str, int]:
        """
        Every blob a pin holds, with its declared size; without the pin
        C{excluding} (upstream, repo, reference) when given.
        """
        rows = await self._execute(
            "SELECT DISTINCT b.blob, b.size FROM pin_manifests AS m JOIN manifest_blobs AS b"
            " ON b.manifest = m.manifest WHERE NOT (m.upstream = ? AND m.repo = ? AND m.reference = ?)",
            *(excluding or ("", "", "")),
        )
        return {str(blob): int(size) for blob, size in rows}

    async def protected_blobs(self, since: float, recent: Iterable[str]) -> list[str]:
        """
        The blobs eviction and expiry must leave: those a pin holds, and
        those of a manifest read at or after C{since}, by the database's
        last access or in C{recent} (reads not written to it yet).
        """
        rows = await self._execute(
            "SELECT DISTINCT blob FROM manifest_blobs WHERE manifest IN ("
            " SELECT manifest FROM pin_manifests"
            " UNION SELECT digest FROM manifests WHERE last_access >= ?"
            " UNION SELECT value FROM json_each(?))",
            since, json.dumps(list(recent)),
        )
        return [str(row[0]) for row in rows]
