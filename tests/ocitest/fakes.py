"""
Deterministic stand-ins for the reactor and the disk thread pool, for unit
tests of the fan-out streamer and the resources.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

__all__ = ["Reactor", "SyncPool", "run"]


class Reactor(MemoryReactorClock):
    """
    A clock that also takes results "from threads": they run on the next
    C{advance(0)}, as the real reactor runs them on its next iteration.
    """

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
