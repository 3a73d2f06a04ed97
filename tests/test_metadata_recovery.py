"""
The metadata database when it is corrupt, locked, closed or cannot be
created: real SQLite files in a tmp dir, on the real reactor's threads.

A corrupt database is moved aside and a new one created (the stored files
are the truth, and the janitor's recovery adopts them again); one that is
locked or cannot be created is a L{MetadataUnavailable} saying which and
why, never an C{AssertionError} or a hang.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.python.threadpool import ThreadPool

from ocicache._spec._reference import Digest
from ocicache._storage._budget import Budget
from ocicache._storage._capacity import Capacity
from ocicache._storage._disk import Disk
from ocicache._storage._janitor import Janitor
from ocicache._storage._metadata import (
    Metadata,
    MetadataCorrupt,
    MetadataLocked,
    MetadataUnavailable,
)
from ocicache._storage._store import Kind, Store

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _metadata(path: Path, busy_timeout: float = 5.0) -> Metadata:
    return Metadata(str(path), IReactorThreads(reactor), busy_timeout=busy_timeout)


def _healthy(path: Path, rows: int = 2000) -> None:
    """A real metadata database with enough rows to span many pages."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,"
               " created_at REAL NOT NULL, last_access REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0)")
    db.executemany("INSERT INTO blobs VALUES (?, ?, 0, 0, 0)",
                   [(f"sha256:{i:064x}", i) for i in range(rows)])
    db.close()


def _random_bytes(path: Path) -> bytes:
    data = os.urandom(64 * 1024)
    path.write_bytes(data)
    return data


def _garbage_pages(path: Path) -> bytes:
    """A valid SQLite header and schema page, then garbage: quick_check fails."""
    _healthy(path)
    data = bytearray(path.read_bytes())
    for page in range(2, len(data) // 4096, 3):
        data[page * 4096 + 20:page * 4096 + 220] = os.urandom(200)
    path.write_bytes(bytes(data))
    return bytes(data)


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "ocicache-metadata" in t.name]


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "metadata.sqlite"
    for thread in _pool_threads():
        thread.join(timeout=5)


# -- corrupt: moved aside, a new one created


@pytest.mark.parametrize("corrupt", [_random_bytes, _garbage_pages], ids=["random-bytes", "garbage-pages"])
@pytest_twisted.ensureDeferred
async def test_a_corrupt_database_is_moved_aside_and_a_new_one_works(db_path: Path, corrupt: object) -> None:
    original = corrupt(db_path)  # type: ignore[operator]
    metadata = _metadata(db_path)
    rebuilt = metadata.open_now(rebuild=True)
    try:
        assert rebuilt is not None
        assert rebuilt.moved_to.startswith(str(db_path) + ".corrupt-")
        assert rebuilt.moved_to.endswith("Z")
        with open(rebuilt.moved_to, "rb") as f:
            assert f.read() == original
        assert rebuilt.reason
        assert "\n" not in rebuilt.reason
        # The new database is empty and in use.
        assert await metadata.blobs() == []
        await metadata.put_blob("sha256:" + "a" * 64, 5, 1.0)
        assert [row.size for row in await metadata.blobs()] == [5]
        await metadata.put_tag("docker.io", "library/x", "v1", "sha256:" + "b" * 64, 2.0)
        row = await metadata.tag("docker.io", "library/x", "v1")
        assert row is not None and row.digest == "sha256:" + "b" * 64
    finally:
        await metadata.close()
    assert glob.glob(str(db_path) + ".corrupt-*") == [rebuilt.moved_to]


@pytest_twisted.ensureDeferred
async def test_the_side_files_of_a_corrupt_database_go_aside_with_it(db_path: Path) -> None:
    _random_bytes(db_path)
    for suffix, data in (("-wal", b"w" * 100), ("-shm", b"s" * 100)):
        db_path.with_name(db_path.name + suffix).write_bytes(data)
    metadata = _metadata(db_path)
    rebuilt = metadata.open_now(rebuild=True)
    try:
        assert rebuilt is not None
        for suffix, data in (("-wal", b"w" * 100), ("-shm", b"s" * 100)):
            with open(rebuilt.moved_to + suffix, "rb") as f:
                assert f.read() == data
        assert await metadata.blobs() == []
    finally:
        await metadata.close()
    # Nothing of the old database is left beside the new one.
    for suffix in ("-wal", "-shm"):
        side = db_path.with_name(db_path.name + suffix)
        assert not side.exists() or side.read_bytes()[:100] not in (b"w" * 100, b"s" * 100)


@pytest_twisted.ensureDeferred
async def test_async_open_rebuilds_too(db_path: Path) -> None:
    _random_bytes(db_path)
    metadata = _metadata(db_path)
    rebuilt = await metadata.open(rebuild=True)
    try:
        assert rebuilt is not None and os.path.exists(rebuilt.moved_to)
        assert await metadata.manifest_digests() == []
    finally:
        await metadata.close()


def test_without_rebuild_a_corrupt_database_is_an_error_and_left_alone(db_path: Path) -> None:
    original = _random_bytes(db_path)
    metadata = _metadata(db_path)
    with pytest.raises(MetadataCorrupt) as raised:
        metadata.open_now()
    message = str(raised.value)
    assert str(db_path) in message and "corrupt" in message and "\n" not in message
    assert db_path.read_bytes() == original
    assert glob.glob(str(db_path) + ".corrupt-*") == []
    assert not metadata.is_open
    assert _pool_threads() == []


def test_quick_check_findings_make_it_corrupt(db_path: Path) -> None:
    _garbage_pages(db_path)
    with pytest.raises(MetadataCorrupt) as raised:
        _metadata(db_path).open_now()
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("ddl", [
    # A table of ours without a column the code uses.
    "CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL)",
    # The right columns, but no primary key for the upserts to conflict on.
    "CREATE TABLE tags (upstream TEXT, repo TEXT, tag TEXT, digest TEXT, checked_at REAL)",
    # An extra column the inserts cannot fill.
    "CREATE TABLE sources (digest TEXT NOT NULL, upstream TEXT NOT NULL, repo TEXT NOT NULL,"
    " owner TEXT NOT NULL, PRIMARY KEY (digest, upstream, repo))",
], ids=["missing-column", "no-primary-key", "required-extra-column"])
@pytest_twisted.ensureDeferred
async def test_a_schema_it_cannot_migrate_is_moved_aside(db_path: Path, ddl: str) -> None:
    db = sqlite3.connect(db_path)
    db.execute(ddl)
    db.commit()
    db.close()
    metadata = _metadata(db_path)
    rebuilt = metadata.open_now(rebuild=True)
    try:
        assert rebuilt is not None and "schema" in rebuilt.reason
        await metadata.put_blob("sha256:" + "c" * 64, 7, 1.0)
        await metadata.put_tag("u", "r", "t", "sha256:" + "c" * 64, 1.0)
        await metadata.put_source("sha256:" + "c" * 64, "u", "r")
        assert await metadata.has_source("sha256:" + "c" * 64, "u", "r")
    finally:
        await metadata.close()


@pytest_twisted.ensureDeferred
async def test_missing_tables_are_created_and_the_rest_kept(db_path: Path) -> None:
    _healthy(db_path, rows=3)
    metadata = _metadata(db_path)
    assert metadata.open_now(rebuild=True) is None
    try:
        assert len(await metadata.blobs()) == 3
        await metadata.put_tag("u", "r", "t", "sha256:" + "d" * 64, 1.0)
        assert await metadata.tag("u", "r", "t") is not None
    finally:
        await metadata.close()
    assert glob.glob(str(db_path) + ".corrupt-*") == []


# -- the files are the truth: recovery adopts them into the new database


@pytest_twisted.ensureDeferred
async def test_after_a_rebuild_the_janitors_recovery_adopts_the_stored_blobs(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "cache"))
    store.prepare()
    data = b"layer bytes" * 100
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    store.write_small(Kind.BLOB, digest, data)
    path = Path(store.root) / "metadata.sqlite"
    _random_bytes(path)
    pool = ThreadPool(minthreads=0, maxthreads=2, name="test-disk")
    pool.start()
    metadata = _metadata(path)
    try:
        assert metadata.open_now(rebuild=True) is not None
        disk = Disk(reactor, store, metadata, pool)
        capacity = Capacity(Budget(disk.store.root, None, None), disk)
        report = await Janitor(disk, capacity, None).recover()
        assert report.adopted == 1
        assert [(row.digest, row.size) for row in await metadata.blobs()] == [(str(digest), len(data))]
        assert capacity.size == len(data)
    finally:
        await metadata.close()
        pool.stop()


# -- locked, not creatable, closed: a clear error, never an assert


def _lock_exclusively(path: Path) -> sqlite3.Connection:
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("INSERT INTO blobs VALUES ('x', 1, 0, 0, 0)")
    return locker


def test_a_locked_database_is_locked_not_corrupt_and_is_not_moved(db_path: Path) -> None:
    _healthy(db_path, rows=1)
    locker = _lock_exclusively(db_path)
    try:
        metadata = _metadata(db_path, busy_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(MetadataLocked) as raised:
            metadata.open_now(rebuild=True)
        assert time.monotonic() - started < 3
        assert str(db_path) in str(raised.value) and "locked" in str(raised.value)
        assert glob.glob(str(db_path) + ".corrupt-*") == []
        assert not metadata.is_open
    finally:
        locker.close()


@pytest_twisted.ensureDeferred
async def test_a_write_lock_held_elsewhere_fails_writes_with_metadata_locked(db_path: Path) -> None:
    metadata = _metadata(db_path, busy_timeout=0.2)
    await metadata.open()
    try:
        writer = sqlite3.connect(db_path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            assert await metadata.blobs() == []  # WAL: reads go on
            with pytest.raises(MetadataLocked):
                await metadata.put_blob("sha256:" + "e" * 64, 1, 1.0)
        finally:
            writer.close()
        await metadata.put_blob("sha256:" + "e" * 64, 1, 1.0)
    finally:
        await metadata.close()


def test_a_database_that_cannot_be_created_names_the_path_and_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    path = blocker / "metadata.sqlite"
    metadata = _metadata(path)
    with pytest.raises(MetadataUnavailable) as raised:
        metadata.open_now(rebuild=True)
    assert not isinstance(raised.value, (MetadataCorrupt, MetadataLocked))
    message = str(raised.value)
    assert str(path) in message and "Not a directory" in message and "\n" not in message
    assert blocker.read_text() == "a file where the cache directory should be"
    assert _pool_threads() == []


def test_a_directory_in_the_way_cannot_be_opened_and_is_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite"
    path.mkdir()
    with pytest.raises(MetadataUnavailable) as raised:
        _metadata(path).open_now(rebuild=True)
    assert not isinstance(raised.value, MetadataCorrupt)
    assert path.is_dir() and glob.glob(str(path) + ".corrupt-*") == []


@pytest_twisted.ensureDeferred
async def test_a_closed_or_unopened_database_raises_metadata_unavailable(db_path: Path) -> None:
    metadata = _metadata(db_path)
    with pytest.raises(MetadataUnavailable, match="not open"):
        await metadata.blobs()
    await metadata.open()
    await metadata.close()
    for call in (metadata.blobs(), metadata.summary(), metadata.expire_tags(0.0),
                 metadata.forget("blobs", ["sha256:" + "f" * 64]), metadata.touch_blobs({"d": (1.0, 1)})):
        with pytest.raises(MetadataUnavailable, match="not open"):
            await call


def test_no_assert_guards_the_database_under_python_o(db_path: Path) -> None:
    """C{python -O} strips asserts: the guard must be a real exception."""
    code = (
        "import sys\n"
        "from ocicache._storage._metadata import Metadata, MetadataUnavailable\n"
        "class R:\n"
        "    def callFromThread(self, f, *a, **k): f(*a, **k)\n"
        f"m = Metadata({str(db_path)!r}, R())\n"
        "d = m.put_blob('sha256:' + 'a' * 64, 1, 1.0)\n"
        "errors = []\n"
        "d.addErrback(lambda f: errors.append(f.value))\n"
        "print(type(errors[0]).__name__ if errors else 'no error')\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    result = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True,
                            env=env, timeout=30)
    assert result.stdout.strip() == "MetadataUnavailable", result.stderr


def test_a_thread_busy_in_sqlite_does_not_keep_the_process_alive(db_path: Path) -> None:
    """
    The database thread waits on a lock another connection holds; the
    process still ends as soon as its main thread does.
    """
    _healthy(db_path, rows=1)
    code = (
        "import sqlite3, time\n"
        "from twisted.internet import reactor\n"
        "from ocicache._storage._metadata import Metadata\n"
        f"locker = sqlite3.connect({str(db_path)!r}, isolation_level=None)\n"
        "locker.execute('PRAGMA locking_mode=EXCLUSIVE')\n"
        "locker.execute('BEGIN EXCLUSIVE')\n"
        "locker.execute(\"INSERT INTO blobs VALUES ('x', 1, 0, 0, 0)\")\n"
        f"m = Metadata({str(db_path)!r}, reactor, busy_timeout=120)\n"
        "m.open()\n"
        "time.sleep(0.5)\n"
        "print('leaving', flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == "leaving", result.stderr
    assert time.monotonic() - started < 10


@pytest_twisted.ensureDeferred
async def test_deleting_blobs_prunes_their_access_proofs(db_path: Path) -> None:
    metadata = _metadata(db_path)
    await metadata.open()
    try:
        kept, gone = f"sha256:{1:064x}", f"sha256:{2:064x}"
        for digest in (kept, gone):
            await metadata.put_blob(digest, 10, 0.0)
            await metadata.put_source(digest, "docker.io", "library/a")
        await metadata.delete_blobs([gone])
        assert await metadata.has_source(kept, "docker.io", "library/a")
        assert not await metadata.has_source(gone, "docker.io", "library/a")
    finally:
        await metadata.close()


# -- several processes on one database (worker processes)


@pytest_twisted.ensureDeferred
async def test_a_write_waits_out_a_lock_held_past_the_busy_timeout(db_path: Path) -> None:
    metadata = _metadata(db_path, busy_timeout=0.2)
    await metadata.open()
    try:
        writer = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        writer.execute("BEGIN IMMEDIATE")
        # Another process's transaction, longer than the busy timeout.
        threading.Timer(0.35, writer.close).start()
        await metadata.put_blob("sha256:" + "f" * 64, 7, 1.0)
        assert [row.size for row in await metadata.blobs()] == [7]
    finally:
        await metadata.close()


def _open_at_once(paths: list[Path]) -> list[Metadata]:
    """Open a database from several connections at the same instant, as processes starting together do."""
    opened = [_metadata(path) for path in paths]
    barrier = threading.Barrier(len(opened))
    outcomes: list[object] = [None] * len(opened)

    def open_one(index: int) -> None:
        barrier.wait(10)
        try:
            outcomes[index] = opened[index].open_now(rebuild=True)
        except BaseException as e:
            outcomes[index] = e

    threads = [threading.Thread(target=open_one, args=(index,)) for index in range(len(opened))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not [outcome for outcome in outcomes if isinstance(outcome, BaseException)], outcomes
    return opened


@pytest_twisted.ensureDeferred
async def test_processes_creating_the_database_at_once_make_one_schema(db_path: Path) -> None:
    opened = _open_at_once([db_path] * 4)
    try:
        await opened[0].put_blob("sha256:" + "a" * 64, 3, 1.0)
        for metadata in opened:
            assert [row.size for row in await metadata.blobs()] == [3]
    finally:
        for metadata in opened:
            await metadata.close()
    db = sqlite3.connect(db_path)
    try:
        triggers = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        assert len(triggers) == len(set(triggers)) == 9
        # The row's arrival is in the change log once.
        assert db.execute("SELECT tbl, digest, size FROM changes").fetchall() == [("blobs", "sha256:" + "a" * 64, 3)]
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_processes_finding_it_corrupt_at_once_move_it_aside_once(db_path: Path) -> None:
    _random_bytes(db_path)
    opened = _open_at_once([db_path] * 3)
    try:
        assert len(glob.glob(str(db_path) + ".corrupt-*")) == 1
        # They all use the one new database.
        await opened[1].put_blob("sha256:" + "c" * 64, 9, 1.0)
        for metadata in opened:
            assert [row.size for row in await metadata.blobs()] == [9]
    finally:
        for metadata in opened:
            await metadata.close()
