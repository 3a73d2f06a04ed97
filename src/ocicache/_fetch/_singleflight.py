"""
Collapse concurrent work on one key into a single operation.

The first caller for a key starts the work; everyone who asks for the same
key while it runs gets their own L{Deferred} for the same result.  Each
caller owns its Deferred, so one caller cancelling (a client hanging up)
never cancels the work that the others still wait for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.python.failure import Failure

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """
    A map from key to the L{Deferred} of work in flight for that key.
    """

    def __init__(self) -> None:
        self._waiters: dict[K, list[Deferred[V]]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._waiters

    def __len__(self) -> int:
        return len(self._waiters)

    def call(self, key: K, work: Callable[[], Awaitable[V]]) -> tuple[Deferred[V], bool]:
        """
        Return a Deferred for the result of C{work()} under C{key}, and
        whether this call joined work already in flight (C{True}) or
        started it (C{False}).
        """
        mine: Deferred[V] = Deferred()
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.append(mine)
            return mine, True
        self._waiters[key] = [mine]
        try:
            started: Deferred[V] = ensureDeferred(work())  # type: ignore[arg-type]
        except BaseException:
            started = fail(Failure())
        started.addBoth(self._settle, key)
        return mine, False

    def _settle(self, result: V | Failure, key: K) -> None:
        waiters = self._waiters.pop(key)
        for waiter in waiters:
            # A waiter that was cancelled has already fired; skip it.
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
        # Returning None consumes a failure here: every waiter has seen it.
