"""
One budget for several processes on one store (L{ocicache._storage._budget}
with a shared L{Disk}): each process's books follow what the others stored
and removed, through the change log SQLite's triggers keep, and count the
room the others' commits in flight reserve.

Two "processes" in this one: two connections to one SQLite database and
two budgets, each with its own budget files (their own descriptors, as two
processes have), on a real L{Store} in a tmp dir; their disk and database
work runs at once in this thread, on the fake reactor of L{ocitest.fakes}.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

import ocicache._storage._metadata as metadata_module
from ocicache._spec._reference import Digest
from ocicache._storage._budget import Budget
from ocicache._storage._capacity import Capacity
from ocicache._storage._disk import Disk
from ocicache._storage._metadata import Metadata
from ocicache._storage._store import Kind, Store
from ocitest.fakes import Reactor, SyncThreadPool, run

LIMIT = 1000


@dataclass
class _Process:
    """One process's view of the shared store: its database connection, budget and blob books."""

    disk: Disk
    budget: Budget
    capacity: Capacity


@pytest.fixture
def clock() -> Reactor:
    return Reactor()


@pytest.fixture
def processes(tmp_path: Path, clock: Reactor) -> Iterator[Callable[[], _Process]]:
    store = Store(str(tmp_path / "cache"))
    store.prepare()
    started: list[_Process] = []

    def start() -> _Process:
        metadata = Metadata(os.path.join(store.root, "metadata.sqlite"), clock)  # type: ignore[arg-type]
        metadata._pool = SyncThreadPool(minthreads=0, maxthreads=1)  # type: ignore[assignment]
        metadata.open()
        run(clock)
        disk = Disk(clock, store, metadata, SyncThreadPool(minthreads=0, maxthreads=1))
        budget = Budget(store.root, LIMIT, shared=disk)
        budget.open()
        process = _Process(disk, budget, Capacity(budget, disk))
        started.append(process)
        return process

    yield start
    for process in started:
        process.budget.close()
        process.disk.metadata.close()
    run(clock)


def _done(clock: Reactor, d: Deferred[Any]) -> object:
    results: list[object] = []
    d.addBoth(results.append)
    run(clock)
    assert results, "did not finish"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _room(clock: Reactor, process: _Process, size: int) -> bool:
    return bool(_done(clock, Deferred.fromCoroutine(process.capacity.make_room(size))))


def _store(clock: Reactor, process: _Process, size: int, seed: str) -> Digest:
    """A blob of C{size} bytes committed by C{process} as the blob service does: room, file, row, books."""
    assert _room(clock, process, size)
    data = hashlib.sha256(seed.encode()).digest() * (size // 32 + 1)
    data = data[:size]
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    process.disk.store.write_small(Kind.BLOB, digest, data)
    _done(clock, process.capacity.keep(digest, size))
    return digest


def _names(process: _Process) -> set[Digest]:
    return {digest for digest, _, _ in process.disk.store.walk(Kind.BLOB)}


def _on_disk(process: _Process) -> int:
    return sum(size for _, _, size in process.disk.store.walk(Kind.BLOB))


def test_a_commit_evicts_what_another_process_stored(clock: Reactor,
                                                     processes: Callable[[], _Process]) -> None:
    one, two = processes(), processes()
    first = _store(clock, one, 600, "one")
    # The other process never saw it committed, and learns it from the log.
    second = _store(clock, two, 600, "two")
    assert _on_disk(one) <= LIMIT
    assert _names(one) == {second}
    # And the first follows: its books hold the second's entry, not its own.
    third = _store(clock, one, 300, "three")
    assert set(one.capacity.policy.keys()) == {second, third}
    assert one.budget.size == 900 and _on_disk(one) == 900 and _names(one) == {second, third}
    assert first not in two.capacity.policy


def test_room_another_process_reserved_is_not_given_twice(clock: Reactor,
                                                          processes: Callable[[], _Process]) -> None:
    one, two = processes(), processes()
    assert _room(clock, one, 600)
    # In flight in the first process: the second cannot have it.
    assert not _room(clock, two, 600)
    one.capacity.release(600)
    assert _room(clock, two, 600)


def test_a_process_far_behind_the_log_reads_the_tables(clock: Reactor, processes: Callable[[], _Process],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata_module, "CHANGES_KEPT", 2)
    one, two = processes(), processes()
    assert _room(clock, two, 1)  # it has read the log up to here
    two.capacity.release(1)
    stored = [_store(clock, one, 100, f"blob {n}") for n in range(6)]
    # The log was pruned past where the second had read: it reads the table whole.
    assert _room(clock, two, 100)
    assert set(two.capacity.policy.keys()) == set(stored) and two.budget.size == 600
