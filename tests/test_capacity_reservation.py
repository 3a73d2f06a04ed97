"""
Commits in flight hold a reservation: however concurrent C{make_room}
calls, evictions and commits interleave, C{blobs/} never holds more than
C{max_size}, and C{min_free} is judged on the free space left once the
evictions of the other commits are done.  With one budget for every kind
(blobs, git responses, files), the same holds for their sum, and a commit
of one kind evicts the oldest entries of any other, never a protected one.

A real L{Store} and a real L{Metadata} (SQLite) in a tmp dir, on the fake
reactor of L{ocitest.fakes}.  The disk pool is a L{SteppingPool}: its work
queues up and the test runs it one job at a time, in a seeded random order,
so every C{make_room}, eviction and commit yields at each disk call as it
would with a real pool, only in orders a real pool seldom hits.  The bounds
are checked on the files after every step.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ocicache._spec._reference import Digest
from ocicache._storage._budget import Budget
from ocicache._storage._capacity import Capacity
from ocicache._storage._disk import Disk
from ocicache._storage._janitor import Janitor, Report
from ocicache._storage._metadata import Metadata
from ocicache._storage._store import Kind, Store, TempFile
from ocitest.fakes import Reactor, run

LIMIT = 1000

Starter = Callable[[], Coroutine[Any, Any, object]]


class SteppingPool(ThreadPool):
    """
    A thread pool that starts no thread.  With C{immediate}, work runs at
    once in the calling thread; otherwise it queues, and L{step} runs one
    queued job, chosen by the caller.
    """

    def __init__(self, immediate: bool = False) -> None:
        super().__init__(minthreads=0, maxthreads=1, name="stepping")
        self.immediate = immediate
        self.jobs: list[Callable[[], None]] = []

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(  # type: ignore[override]
        self, onResult: Callable[[bool, object], None] | None,
        func: Callable[..., object], *args: object, **kwargs: object,
    ) -> None:
        def job() -> None:
            try:
                result = func(*args, **kwargs)
            except BaseException:
                if onResult is not None:
                    onResult(False, Failure())
            else:
                if onResult is not None:
                    onResult(True, result)

        if self.immediate:
            job()
        else:
            self.jobs.append(job)

    def step(self, rng: random.Random) -> None:
        self.jobs.pop(rng.randrange(len(self.jobs)))()


@dataclass
class _Parts:
    clock: Reactor
    store: Store
    pool: SteppingPool
    metadata: Metadata

    @property
    def disk(self) -> Disk:
        return Disk(self.clock, self.store, self.metadata, self.pool)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[_Parts]:
    clock = Reactor()
    store = Store(str(tmp_path / "cache"))
    store.prepare()
    # Metadata wants IReactorThreads; it only calls callFromThread, which
    # the fake has.
    metadata = Metadata(os.path.join(store.root, "metadata.sqlite"), clock)  # type: ignore[arg-type]
    # Its queries run at once, in this thread, in order, as on the single
    # database thread; only the disk pool's work is reordered.
    metadata._pool = SteppingPool(immediate=True)  # type: ignore[assignment]
    metadata.open()
    run(clock)
    yield _Parts(clock, store, SteppingPool(), metadata)
    metadata.close()
    run(clock)


def _stored(store: Store) -> int:
    """Bytes under C{blobs/} now, from the files themselves."""
    return sum(size for _, _, size in store.walk(Kind.BLOB))


def _preload(capacity: Capacity, store: Store, sizes: list[int], rng: random.Random) -> None:
    """Blobs already in the store when the daemon started."""
    for size in sizes:
        data = rng.randbytes(size)
        digest = Digest("sha256", hashlib.sha256(data).hexdigest())
        store.write_small(Kind.BLOB, digest, data)
        capacity.load([(digest, size, False)])


@dataclass
class _Body:
    """A verified upstream body, written to its temp file."""

    digest: Digest
    temp: TempFile
    size: int


def _body(store: Store, data: bytes) -> _Body:
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    temp = store.new_temp(digest.encoded[:16])
    os.write(temp.fd, data)
    return _Body(digest, temp, len(data))


async def _download(capacity: Capacity, disk: Disk, body: _Body, fail: bool = False) -> bool:
    """
    What the blob service does with a verified body: make room, commit it
    in the disk pool, then tell the capacity; C{fail} is a commit that
    fails after room was made (and releases the reservation).
    """
    if not await capacity.make_room(body.size):
        body.temp.discard()
        return False
    if fail:
        body.temp.discard()
        capacity.release(body.size)
        return False
    await disk.run(disk.store.commit, body.temp, Kind.BLOB, body.digest)
    capacity.committed(body.digest, body.size)
    return True


def _downloads(capacity: Capacity, parts: _Parts, sizes: list[int], rng: random.Random,
               failing: float = 0.0) -> list[Starter]:
    """
    Downloads of random bodies of these C{sizes}, all written to C{tmp/}
    already; a C{failing} share of them fail after making room.
    """
    return [
        partial(_download, capacity, parts.disk, _body(parts.store, rng.randbytes(size)), rng.random() < failing)
        for size in sizes
    ]


def _drive(parts: _Parts, rng: random.Random, starters: list[Starter],
           check: Callable[[], None] = lambda: None, together: bool = False) -> list[object]:
    """
    Start the coroutines at random moments (all at once when C{together})
    and run the disk pool's jobs one at a time in random order, checking
    the bounds after every step; return what the coroutines returned.
    """
    starters = list(starters)
    tasks: list[Deferred[object]] = []
    for _ in range(100_000):
        run(parts.clock)  # the results "from the thread" reach their coroutines
        check()
        if not starters and all(task.called for task in tasks):
            break
        if starters and (together or not parts.pool.jobs or rng.random() < 0.3):
            tasks.append(Deferred.fromCoroutine(starters.pop(0)()))
        elif parts.pool.jobs:
            parts.pool.step(rng)
        else:
            raise AssertionError("the coroutines wait for nothing the test can run")
        check()
    else:
        raise AssertionError("the coroutines never finished")
    results: list[object] = []
    for task in tasks:
        outcome: list[object] = []
        task.addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        results.append(outcome[0])
    return results


def test_two_commits_of_0_6_the_limit_do_not_both_land(parts: _Parts) -> None:
    capacity = Capacity(Budget(parts.disk.store.root, LIMIT, None), parts.disk)
    rng = random.Random(1)

    def check() -> None:
        assert _stored(parts.store) <= LIMIT

    starters = _downloads(capacity, parts, [600, 600], rng)
    kept = _drive(parts, rng, starters, check, together=True)
    assert sorted(kept, key=repr) == [False, True]
    assert _stored(parts.store) == 600 == capacity.size


@pytest.mark.parametrize("seed", range(40))
def test_max_size_holds_under_any_interleaving(parts: _Parts, seed: int) -> None:
    """
    Commits, the evictions they make room with, and a janitor eviction, all
    interleaved: C{blobs/} stays within the limit at every step, and the
    books match the files at the end.
    """
    capacity = Capacity(Budget(parts.disk.store.root, LIMIT, None), parts.disk)
    rng = random.Random(seed)
    _preload(capacity, parts.store, [rng.randrange(50, 300) for _ in range(3)], rng)

    def check() -> None:
        stored = _stored(parts.store)
        assert stored <= LIMIT, f"blobs/ holds {stored} bytes"

    starters = _downloads(capacity, parts, [rng.randrange(100, 700) for _ in range(8)], rng)
    starters.insert(rng.randrange(len(starters)), partial(capacity.evict, rng.randrange(0, LIMIT)))
    _drive(parts, rng, starters, check)
    assert capacity.size == _stored(parts.store)
    assert {str(key) for key in capacity.policy.keys()} == {
        str(digest) for digest, _, _ in parts.store.walk(Kind.BLOB)
    }


@pytest.mark.parametrize("seed", range(40))
def test_reservations_keep_the_books_when_commits_fail(parts: _Parts, seed: int) -> None:
    """
    Some commits fail after room was made and release their reservation:
    C{size + reserved} never exceeds the limit, and nothing stays reserved
    once every commit has landed or failed.
    """
    capacity = Capacity(Budget(parts.disk.store.root, LIMIT, None), parts.disk)
    rng = random.Random(1000 + seed)
    _preload(capacity, parts.store, [rng.randrange(50, 300) for _ in range(3)], rng)

    def check() -> None:
        assert _stored(parts.store) <= LIMIT
        assert capacity.size + capacity.reserved <= LIMIT

    starters = _downloads(capacity, parts, [rng.randrange(100, 700) for _ in range(8)], rng, failing=0.4)
    _drive(parts, rng, starters, check)
    assert capacity.reserved == 0
    assert capacity.size == _stored(parts.store)


def test_a_reservation_holds_room_until_it_lands_or_is_released(parts: _Parts) -> None:
    capacity = Capacity(Budget(parts.disk.store.root, LIMIT, None), parts.disk)
    rng = random.Random(2)
    _preload(capacity, parts.store, [300], rng)

    def make_room(size: int) -> object:
        (kept,) = _drive(parts, rng, [partial(capacity.make_room, size)])
        return kept

    assert make_room(600) is True  # 300 + 600 fits: nothing evicted
    assert (capacity.size, capacity.reserved) == (300, 600)
    # 600 reserved + 600 cannot fit whatever is evicted: refused, and the
    # stored blob is not evicted for nothing.
    assert make_room(600) is False
    assert (capacity.size, capacity.reserved, _stored(parts.store)) == (300, 600, 300)
    capacity.release(600)  # that commit failed
    assert capacity.reserved == 0
    assert make_room(600) is True
    data = rng.randbytes(600)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    parts.store.write_small(Kind.BLOB, digest, data)
    capacity.committed(digest, 600)  # the reservation becomes the blob
    assert (capacity.size, capacity.reserved) == (900, 0)


def test_min_free_is_judged_after_the_other_commits_evictions(
    parts: _Parts, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A filesystem of 2700 bytes with a floor of 1000 free, holding four
    300-byte blobs and two 200-byte downloads in tmp/ (1100 free).  Keeping
    a 200-byte blob needs 100 more bytes free: one eviction makes room for
    both commits (a commit is a rename, it takes no space).  A second
    make_room that read the free space before the first one's unlink would
    evict another blob for nothing.
    """
    capacity = Capacity(Budget(parts.disk.store.root, None, 1000), parts.disk)
    rng = random.Random(3)
    _preload(capacity, parts.store, [300] * 4, rng)

    def free() -> int:
        temp = sum(entry.stat().st_size for entry in parts.store.temp_files())
        return 2700 - _stored(parts.store) - temp

    def statvfs(path: str) -> Any:
        return SimpleNamespace(f_blocks=2700, f_frsize=1, f_bavail=free())

    monkeypatch.setattr("ocicache._storage._budget.os.statvfs", statvfs)

    def check() -> None:
        assert free() >= 1000, f"{free()} bytes free"

    starters = _downloads(capacity, parts, [200, 200], rng)
    kept = _drive(parts, rng, starters, check, together=True)
    assert kept == [True, True]
    assert _stored(parts.store) == 3 * 300 + 2 * 200, "evicted more than min_free needed"
    assert free() == 1400


def test_recovery_adopting_a_blob_in_flight_leaves_its_reservation(parts: _Parts) -> None:
    """
    Recovery runs beside the first downloads: it may adopt a blob that was
    renamed into place but whose commit has not been counted yet.  That
    must not consume the reservation, or the books would run short.
    """
    capacity = Capacity(Budget(parts.disk.store.root, LIMIT, None), parts.disk)
    rng = random.Random(4)
    assert _drive(parts, rng, [partial(capacity.make_room, 600)]) == [True]
    data = rng.randbytes(600)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    parts.store.write_small(Kind.BLOB, digest, data)  # renamed, not yet counted
    janitor = Janitor(parts.disk, capacity, None)
    (report,) = _drive(parts, rng, [janitor.recover])
    assert isinstance(report, Report) and report.adopted == 1
    assert (capacity.size, capacity.reserved) == (600, 600)
    capacity.committed(digest, 600)
    assert (capacity.size, capacity.reserved) == (600, 0)


# -- one budget, every kind: blobs, git responses, files

KINDS = ((Kind.BLOB, "blobs"), (Kind.GIT, "git_entries"), (Kind.FILES, "file_entries"))


def _books(parts: _Parts, limit: int | None = LIMIT,
           protected: dict[Kind, list[Digest]] | None = None) -> tuple[Budget, dict[Kind, Capacity]]:
    """One budget of C{limit} bytes, and a book per kind in it (C{protected}: each kind's pins)."""
    budget = Budget(parts.store.root, limit, None)
    pins = protected if protected is not None else {}

    def pinned(kind: Kind) -> Callable[[], Coroutine[Any, Any, list[Digest]]]:
        async def protect() -> list[Digest]:
            return pins.get(kind, [])
        return protect

    books = {kind: Capacity(budget, parts.disk, table=table, kind=kind, protected=pinned(kind))
             for kind, table in KINDS}
    return budget, books


def _stored_of_every_kind(store: Store) -> int:
    return sum(size for kind, _ in KINDS for _, _, size in store.walk(kind))


def _kept(parts: _Parts, books: dict[Kind, Capacity], kind: Kind, size: int, rng: random.Random) -> Digest:
    """An entry of C{kind} already in the store (loaded at start-up), oldest first."""
    data = rng.randbytes(size)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    parts.store.write_small(kind, digest, data)
    books[kind].load([(digest, size, False)])
    return digest


async def _commit(capacity: Capacity, disk: Disk, kind: Kind, body: _Body) -> bool:
    """As L{_download}, for an entry of any kind."""
    if not await capacity.make_room(body.size):
        body.temp.discard()
        return False
    await disk.run(disk.store.commit, body.temp, kind, body.digest)
    capacity.committed(body.digest, body.size)
    return True


@pytest.mark.parametrize("seed", range(30))
def test_max_size_bounds_every_kind_together_under_any_interleaving(parts: _Parts, seed: int) -> None:
    """
    Commits of blobs, git responses and files, the evictions they make room
    with (of any kind), and a janitor eviction, all interleaved: the sum of
    every kind's files stays within the one limit at every step, and each
    book matches its kind's files at the end.
    """
    rng = random.Random(2000 + seed)
    budget, books = _books(parts)
    for _ in range(4):
        _kept(parts, books, rng.choice([kind for kind, _ in KINDS]), rng.randrange(50, 200), rng)

    def check() -> None:
        stored = _stored_of_every_kind(parts.store)
        assert stored <= LIMIT, f"the store holds {stored} bytes"
        assert budget.size + budget.reserved <= LIMIT

    starters: list[Starter] = []
    for _ in range(9):
        kind = rng.choice([kind for kind, _ in KINDS])
        body = _body(parts.store, rng.randbytes(rng.randrange(100, 600)))
        starters.append(partial(_commit, books[kind], parts.disk, kind, body))
    starters.insert(rng.randrange(len(starters)), partial(books[Kind.GIT].evict, rng.randrange(0, LIMIT)))
    _drive(parts, rng, starters, check)
    assert budget.reserved == 0
    assert budget.size == _stored_of_every_kind(parts.store)
    for kind, _ in KINDS:
        assert books[kind].size == sum(size for _, _, size in parts.store.walk(kind))
        assert {str(key) for key in books[kind].policy.keys()} == {str(d) for d, _, _ in parts.store.walk(kind)}


def test_a_commit_of_one_kind_evicts_the_oldest_entries_of_another(parts: _Parts) -> None:
    rng = random.Random(5)
    budget, books = _books(parts)
    oldest = _kept(parts, books, Kind.BLOB, 300, rng)
    blob = _kept(parts, books, Kind.BLOB, 300, rng)
    response = _kept(parts, books, Kind.GIT, 300, rng)
    # 900 stored, a 300-byte file: room is made down to 900 - 300 = 600.
    (kept,) = _drive(parts, rng, [partial(_commit, books[Kind.FILES], parts.disk, Kind.FILES,
                                          _body(parts.store, rng.randbytes(300)))])
    assert kept is True
    assert parts.store.read(Kind.BLOB, oldest) is None
    assert parts.store.read(Kind.BLOB, blob) is not None and parts.store.read(Kind.GIT, response) is not None
    assert (books[Kind.BLOB].size, books[Kind.GIT].size, books[Kind.FILES].size, budget.size) == (300, 300, 300, 900)
    # The next, a git response: the oldest left is the blob.
    (kept,) = _drive(parts, rng, [partial(_commit, books[Kind.GIT], parts.disk, Kind.GIT,
                                          _body(parts.store, rng.randbytes(300)))])
    assert kept is True and parts.store.read(Kind.BLOB, blob) is None and len(books[Kind.BLOB].policy) == 0
    assert budget.size == _stored_of_every_kind(parts.store) == 900


def test_no_kind_evicts_what_another_protects(parts: _Parts) -> None:
    rng = random.Random(6)
    pins: dict[Kind, list[Digest]] = {}
    budget, books = _books(parts, protected=pins)
    pinned = _kept(parts, books, Kind.BLOB, 400, rng)
    response = _kept(parts, books, Kind.GIT, 400, rng)
    pins[Kind.BLOB] = [pinned]
    (kept,) = _drive(parts, rng, [partial(_commit, books[Kind.FILES], parts.disk, Kind.FILES,
                                          _body(parts.store, rng.randbytes(400)))])
    assert kept is True
    assert parts.store.read(Kind.BLOB, pinned) is not None, "a pinned blob was evicted for a file"
    assert parts.store.read(Kind.GIT, response) is None
    # Nothing else may go: a file that needs the pinned blob's room is not kept.
    (kept,) = _drive(parts, rng, [partial(_commit, books[Kind.FILES], parts.disk, Kind.FILES,
                                          _body(parts.store, rng.randbytes(700)))])
    assert kept is False and parts.store.read(Kind.BLOB, pinned) is not None
    assert budget.size == _stored_of_every_kind(parts.store) <= LIMIT


def test_a_reservation_of_one_kind_holds_room_against_the_others(parts: _Parts) -> None:
    rng = random.Random(7)
    budget, books = _books(parts)
    blob = _kept(parts, books, Kind.BLOB, 300, rng)
    (kept,) = _drive(parts, rng, [partial(books[Kind.GIT].make_room, 600)])
    assert kept is True and budget.reserved == 600 == books[Kind.FILES].reserved
    # 600 reserved for git + 600 for a file cannot fit: refused, and the
    # blob is not evicted for nothing.
    (kept,) = _drive(parts, rng, [partial(books[Kind.FILES].make_room, 600)])
    assert kept is False and parts.store.read(Kind.BLOB, blob) is not None
    books[Kind.GIT].release(600)  # the git commit failed
    (kept,) = _drive(parts, rng, [partial(books[Kind.FILES].make_room, 600)])
    assert kept is True and (budget.size, budget.reserved) == (300, 600)


def test_a_thing_larger_than_the_whole_budget_is_not_kept_and_evicts_nothing(parts: _Parts) -> None:
    rng = random.Random(8)
    budget, books = _books(parts)
    blob = _kept(parts, books, Kind.BLOB, 300, rng)
    (kept,) = _drive(parts, rng, [partial(books[Kind.GIT].make_room, LIMIT + 1)])
    assert kept is False and budget.reserved == 0 and parts.store.read(Kind.BLOB, blob) is not None


def test_a_fleets_read_times_order_evictions_of_every_kind(parts: _Parts) -> None:
    """
    With a fleet's read times for one kind (the bucket's blobs), evictions
    go oldest read first across all kinds, the others judged by this
    node's reads of them (their rows).
    """
    rng = random.Random(9)
    budget = Budget(parts.store.root, LIMIT, None)
    times: dict[Digest, float] = {}

    async def fleet() -> dict[Digest, float]:
        return times

    blobs = Capacity(budget, parts.disk, recency=fleet)
    git = Capacity(budget, parts.disk, table="git_entries", kind=Kind.GIT)
    books = {Kind.BLOB: blobs, Kind.GIT: git}
    # Loaded oldest first, read in another order: git's at 10, the blobs' at 5 and 20.
    response = _kept(parts, books, Kind.GIT, 300, rng)
    early, late = _kept(parts, books, Kind.BLOB, 300, rng), _kept(parts, books, Kind.BLOB, 300, rng)
    times.update({early: 5.0, late: 20.0})

    async def row(digest: Digest, at: float) -> None:
        await parts.metadata.put_blob(str(digest), 300, at, table="git_entries")

    _drive(parts, rng, [partial(row, response, 10.0)])
    new = _body(parts.store, rng.randbytes(300))
    (kept,) = _drive(parts, rng, [partial(_commit, git, parts.disk, Kind.GIT, new)])
    assert kept is True
    _drive(parts, rng, [partial(row, new.digest, 30.0)])  # as the git books record a commit
    assert parts.store.read(Kind.BLOB, early) is None, "not the entry read longest ago"
    assert parts.store.read(Kind.GIT, response) is not None and parts.store.read(Kind.BLOB, late) is not None
    # The next goes by the same order: the git response, read at 10.
    (kept,) = _drive(parts, rng, [partial(_commit, git, parts.disk, Kind.GIT, _body(parts.store, rng.randbytes(300)))])
    assert kept is True and parts.store.read(Kind.GIT, response) is None
    assert parts.store.read(Kind.BLOB, late) is not None
