"""
Commits in flight hold a reservation: however concurrent C{make_room}
calls, evictions and commits interleave, C{blobs/} never holds more than
C{max_size}, and C{min_free} is judged on the free space left once the
evictions of the other commits are done.

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
