"""
L{MemoryReturn}: after a storm of closed connections, once it has calmed,
one full collection (the dead connections' reference cycles) and
C{malloc_trim} in the blocking pool; never more than once an interval, and
never while the storm goes on.  L{reuse_large_buffers}: 1 MiB reads from a
socket reuse the heap's pages instead of faulting in new ones.
"""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from ocicache._daemon._memory_return import MemoryReturn, limit_malloc_arenas, malloc_trim, reuse_large_buffers


class _Cycle:
    """What a dead connection leaves: objects only the collector frees."""

    def __init__(self) -> None:
        self.me = self


class World:
    def __init__(self, trim: bool = True) -> None:
        self.clock = Clock()
        self.blocking: list[Callable[[], object]] = []
        self.trims = 0
        self.memory = MemoryReturn(self.clock, self.run_blocking, trim=self.trim if trim else None,
                                   after=10, calm=5.0, window=1.0, interval=5.0)

    def run_blocking(self, work: Callable[[], object]) -> Deferred[object]:
        self.blocking.append(work)
        return succeed(work())

    def trim(self) -> object:
        self.trims += 1
        return 1

    def close(self, count: int, over: float = 0.0) -> None:
        """C{count} connections closed, evenly over C{over} seconds."""
        for _ in range(count):
            self.memory.connection_closed()
            self.clock.advance(over / count)


@pytest.fixture(autouse=True)
def no_automatic_collection() -> Iterator[None]:
    """Only the collection under test frees a cycle."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _garbage() -> weakref.ref[_Cycle]:
    return weakref.ref(_Cycle())


def test_a_few_closed_connections_cost_nothing() -> None:
    world = World()
    dead = _garbage()
    world.close(9)
    world.clock.advance(60)
    assert world.clock.getDelayedCalls() == []
    assert dead() is not None
    assert world.trims == 0


def test_a_storm_that_ends_is_collected_and_trimmed_off_the_reactor() -> None:
    world = World()
    dead = _garbage()
    world.close(100, over=2.0)
    assert dead() is not None  # not during the storm
    world.clock.pump([1.0, 1.0])  # a whole window without a close: calm
    assert dead() is None
    assert world.trims == 1 and world.blocking == [world.trim]
    assert world.clock.getDelayedCalls() == []


def test_nothing_while_the_storm_goes_on() -> None:
    world = World()
    dead = _garbage()
    world.close(200, over=20.0)  # 10 a second, above calm
    assert dead() is not None and world.trims == 0
    world.clock.pump([1.0, 1.0])
    assert dead() is None and world.trims == 1


def test_a_trickle_after_the_storm_is_calm() -> None:
    world = World()
    world.close(50, over=1.0)
    world.close(15, over=5.0)  # 3 a second, below calm
    assert world.trims == 1


def test_at_most_once_an_interval() -> None:
    world = World()
    world.close(10)
    world.clock.advance(1.0)
    assert world.trims == 1  # at 1 s
    world.close(10)
    world.clock.advance(1.0)
    assert world.trims == 1  # at 2 s: too soon after the first
    world.clock.advance(2.9)
    assert world.trims == 1
    world.clock.advance(1.1)  # 5 s after the first
    assert world.trims == 2


def test_without_glibc_only_the_collection() -> None:
    world = World(trim=False)
    dead = _garbage()
    world.close(10)
    world.clock.advance(1.0)
    assert dead() is None
    assert world.blocking == []


def test_stopped_nothing_pending_nor_later() -> None:
    world = World()
    world.close(10)
    world.memory.stop()
    assert world.clock.getDelayedCalls() == []
    world.close(100)
    world.clock.advance(60)
    assert world.trims == 0 and world.clock.getDelayedCalls() == []


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_found_on_glibc() -> None:
    trim = malloc_trim()
    assert trim is not None
    trim()  # returns: 0 or 1, nothing to assert but that it ran


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_arenas_limited_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not limit_malloc_arenas(2)
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas(2)


_BUFFERS = """
import ctypes, sys
from ocicache._daemon._memory_return import reuse_large_buffers

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (malloc.h)
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "reuse":
    assert reuse_large_buffers()
before = mallinfo2().hblks
held = [bytes(1 << 20) for _ in range(8)]  # as eight upstream reads in a download's queue
mapped = mallinfo2().hblks - before
del held
print(mapped, mallinfo2().keepcost)
"""


def _buffers(mode: str) -> tuple[int, int]:
    """Blocks mmap'd while eight 1 MiB buffers are held, and the heap top kept once they are freed."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    environment["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run([sys.executable, "-c", _BUFFERS, mode], capture_output=True, text=True, timeout=60,
                          env=environment, check=True)
    mapped, kept = done.stdout.split()
    return int(mapped), int(kept)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_buffers_come_from_the_heap_and_stay_for_the_next() -> None:
    # glibc alone maps a fresh 1 MiB block (its pages faulted in and zeroed
    # on first touch) and unmaps it when freed; reused, the blocks come
    # from the heap, and their pages stay there for the next reads.
    mapped, kept = _buffers("glibc")
    assert mapped == 8 and kept < 8 << 20
    mapped, kept = _buffers("reuse")
    assert mapped == 0 and kept >= 8 << 20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_buffers_reused_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert not reuse_large_buffers()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not reuse_large_buffers()
