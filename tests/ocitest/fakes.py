"""
Deterministic stand-ins for the reactor and the disk thread pool, for unit
tests of the fan-out streamer and the resources.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ocicache._storage._disk import Disk
from ocicache._storage._metadata import Metadata
from ocicache._storage._store import Store

__all__ = ["ManualPool", "Reactor", "SyncPool", "disk_of", "run"]


class Reactor(MemoryReactorClock):
    """
    A clock that also takes results "from threads": they run on the next
    C{advance(0)}, as the real reactor runs them on its next iteration.
    """

    def __init__(self) -> None:
        # Typed, so that tests may construct it under disallow_untyped_calls.
        MemoryReactorClock.__init__(self)

    def callFromThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        self.callLater(0, f, *args, **kwargs)


def run(clock: Reactor) -> None:
    """
    Run everything that is due now, and whatever that schedules, until the
    reactor is idle.
    """
    for _ in range(100_000):
        if not any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
            return
        clock.advance(0)
    raise AssertionError("the reactor never went idle")


class SyncPool:
    """A disk pool whose work runs at once, in the calling thread."""

    def callInThreadWithCallback(self, onResult: Callable[[bool, object], None],
                                 f: Callable[..., object], *args: object, **kwargs: object) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class SyncThreadPool(ThreadPool):
    """
    A real L{ThreadPool}'s interface (started and stopped as the database
    and the disk start and stop theirs) whose work runs at once, in the
    calling thread.
    """

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(  # type: ignore[override]
        self, onResult: Callable[[bool, object], None] | None, func: Callable[..., object], *args: object,
        **kwargs: object,
    ) -> None:
        if onResult is None:
            func(*args, **kwargs)
            return
        SyncPool().callInThreadWithCallback(onResult, func, *args, **kwargs)


class ManualPool:
    """A disk pool whose work waits until the test runs it, one job at a time."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[bool, object], None], Callable[..., object], tuple[object, ...]]] = []

    def callInThreadWithCallback(self, onResult: Callable[[bool, object], None],
                                 f: Callable[..., object], *args: object, **kwargs: object) -> None:
        assert not kwargs
        self.pending.append((onResult, f, args))

    def run_one(self) -> None:
        onResult, f, args = self.pending.pop(0)
        SyncPool().callInThreadWithCallback(onResult, f, *args)


def disk_of(reactor: object, pool: object, store: Store) -> Disk:
    """
    A L{Disk} over fakes: what a L{Download} needs (a clock, a pool whose
    work runs when the test says, the store), without a database.
    """
    return Disk(cast(IReactorTime, reactor), store, cast(Metadata, None), cast(ThreadPool, pool))
