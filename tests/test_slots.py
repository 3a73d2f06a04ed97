"""
Tests for L{ocicache._fetch._slots}: the bound on concurrent upstream work.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from ocicache._fetch._slots import HOST_POLL, Busy, Priority, Slot, Slots
from ocicache._storage._slot_files import SlotFiles


def _slot(d: Deferred[Slot]) -> Slot:
    got: list[Slot] = []
    d.addCallback(got.append)
    assert got, "the slot was not granted"
    return got[0]


def test_at_most_total_at_once() -> None:
    slots = Slots(total=2, queue=10, per_upstream=lambda name: 5)
    first = _slot(slots.acquire("a", Priority.BLOB))
    _slot(slots.acquire("b", Priority.BLOB))
    third = slots.acquire("c", Priority.BLOB)
    assert not third.called and slots.active == 2
    first.release()
    assert third.called and slots.active == 2


def test_at_most_per_upstream_at_once() -> None:
    slots = Slots(total=10, queue=10, per_upstream=lambda name: 1)
    a = _slot(slots.acquire("a", Priority.BLOB))
    waiting = slots.acquire("a", Priority.BLOB)
    # Another upstream is not held up by a's queue.
    _slot(slots.acquire("b", Priority.BLOB))
    assert not waiting.called
    a.release()
    assert waiting.called


def test_past_the_queue_is_busy() -> None:
    slots = Slots(total=1, queue=2, per_upstream=lambda name: 1)
    _slot(slots.acquire("a", Priority.BLOB))
    slots.acquire("a", Priority.BLOB)
    slots.acquire("a", Priority.BLOB)
    with pytest.raises(Busy) as raised:
        slots.acquire("a", Priority.BLOB)
    assert raised.value.retry_after >= 1


def test_manifests_go_before_blobs() -> None:
    slots = Slots(total=1, queue=10, per_upstream=lambda name: 1)
    held = _slot(slots.acquire("a", Priority.BLOB))
    order: list[str] = []

    def served(slot: Slot, kind: str) -> None:
        order.append(kind)
        slot.release()

    slots.acquire("a", Priority.BLOB).addCallback(served, "blob")
    slots.acquire("a", Priority.MANIFEST).addCallback(served, "manifest")
    held.release()
    assert order == ["manifest", "blob"]


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    slots = Slots(total=1, queue=10, per_upstream=lambda name: 1)
    held = _slot(slots.acquire("a", Priority.BLOB))
    gone = slots.acquire("a", Priority.BLOB)
    gone.addErrback(lambda f: f.trap(CancelledError))
    gone.cancel()
    assert slots.waiting == 0
    after = slots.acquire("a", Priority.BLOB)
    held.release()
    assert after.called and slots.active == 1


def test_release_is_idempotent() -> None:
    slots = Slots(total=1, queue=1, per_upstream=lambda name: 1)
    slot = _slot(slots.acquire("a", Priority.BLOB))
    slot.release()
    slot.release()
    assert slots.active == 0


def _two_processes(tmp_path: Path, clock: Clock, total: int, per_upstream: int) -> tuple[Slots, Slots, SlotFiles]:
    """Two processes' slots on one store: each its own descriptors of the slot files, as two processes have."""
    first, second = SlotFiles(str(tmp_path)), SlotFiles(str(tmp_path))
    return (Slots(total, 10, lambda name: per_upstream, host=(first, clock)),
            Slots(total, 10, lambda name: per_upstream, host=(second, clock)), second)


def test_the_host_bound_holds_across_processes(tmp_path: Path) -> None:
    clock = Clock()
    one, two, _ = _two_processes(tmp_path, clock, total=1, per_upstream=5)
    held = _slot(one.acquire("a", Priority.BLOB))
    # The other process finds the host's one slot taken, and waits.
    waiting = two.acquire("b", Priority.BLOB)
    clock.advance(HOST_POLL)
    assert not waiting.called and two.waiting == 1
    held.release()
    # Its next look finds the slot given back.
    clock.advance(HOST_POLL)
    _slot(waiting).release()
    assert two.active == 0


def test_the_upstream_bound_holds_across_processes(tmp_path: Path) -> None:
    clock = Clock()
    one, two, _ = _two_processes(tmp_path, clock, total=5, per_upstream=1)
    held = _slot(one.acquire("a", Priority.BLOB))
    waiting = two.acquire("a", Priority.BLOB)
    # Another upstream is not held up, and a's wait gave back the slot of all.
    _slot(two.acquire("b", Priority.BLOB))
    clock.advance(HOST_POLL)
    assert not waiting.called
    held.release()
    clock.advance(HOST_POLL)
    assert waiting.called


def test_a_dead_process_slots_come_back(tmp_path: Path) -> None:
    clock = Clock()
    one, two, second_files = _two_processes(tmp_path, clock, total=1, per_upstream=1)
    _slot(two.acquire("a", Priority.BLOB))
    waiting = one.acquire("a", Priority.BLOB)
    # Its descriptors closed, as the kernel closes a dead process's.
    second_files.close()
    clock.advance(HOST_POLL)
    assert waiting.called
