"""
Bounded upstream work: at most so many downloads at once, overall and per
upstream, so that no client (or crowd of clients) can make the daemon
fetch without limit.  Requests past the limit wait in a bounded queue,
manifests before blobs (a pull needs its manifest before any layer);
past the queue they are refused, and the client is told to come back.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable

from attrs import frozen
from twisted.internet.defer import Deferred, succeed

__all__ = ["DEFAULT_DOWNLOADS", "DEFAULT_PER_UPSTREAM", "DEFAULT_QUEUE", "Busy", "Priority", "Slot", "Slots"]

DEFAULT_DOWNLOADS = 32
"""Upstream fetches at once, all upstreams together."""

DEFAULT_PER_UPSTREAM = 16
"""Upstream fetches at once from one upstream (its connection pool's size)."""

DEFAULT_QUEUE = 256
"""Requests that may wait for a slot before the next ones are refused."""


class Priority(enum.IntEnum):
    MANIFEST = 0
    BLOB = 1


@frozen
class Busy(Exception):
    """Every slot is taken and the queue is full: try again later."""

    message: str
    retry_after: int

    def __str__(self) -> str:
        return self.message


class Slot:
    """One upstream fetch under way; L{release} it when it is done."""

    def __init__(self, slots: Slots, upstream: str) -> None:
        self._slots = slots
        self._upstream = upstream
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._upstream)


class Slots:
    def __init__(self, total: int, queue: int, per_upstream: Callable[[str], int] = lambda name: DEFAULT_PER_UPSTREAM,
                 retry_after: int = 1) -> None:
        """
        @param total: fetches at once, all upstreams together.
        @param queue: requests that may wait; past that, L{Busy}.
        @param per_upstream: fetches at once from the upstream named.
        """
        self.total = total
        self.per_upstream = per_upstream
        self.queue = queue
        self._retry_after = retry_after
        self.active = 0
        self._by_upstream: dict[str, int] = {}
        self._waiting: list[tuple[int, int, str, Deferred[Slot]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, d in self._waiting if not d.called)

    def acquire(self, upstream: str, priority: Priority) -> Deferred[Slot]:
        """
        A slot for a fetch from C{upstream}, now or once one is free.
        Fails with L{Busy} at once when the queue is full.  Cancelling the
        Deferred (a client hanging up) leaves the queue.
        """
        if self._free(upstream):
            # Any waiter left can be served by no free slot: every waiter
            # is woken as soon as a slot for it frees up.
            return succeed(self._take(upstream))
        if self.waiting >= self.queue:
            raise Busy(f"{self.active} upstream downloads are running and {self.waiting} waiting",
                       self._retry_after)
        waiter: Deferred[Slot] = Deferred()
        heapq.heappush(self._waiting, (int(priority), next(self._order), upstream, waiter))
        return waiter

    def _free(self, upstream: str) -> bool:
        return self.active < self.total and self._by_upstream.get(upstream, 0) < self.per_upstream(upstream)

    def _take(self, upstream: str) -> Slot:
        self.active += 1
        self._by_upstream[upstream] = self._by_upstream.get(upstream, 0) + 1
        return Slot(self, upstream)

    def _release(self, upstream: str) -> None:
        self.active -= 1
        left = self._by_upstream[upstream] - 1
        if left:
            self._by_upstream[upstream] = left
        else:
            del self._by_upstream[upstream]
        self._wake()

    def _wake(self) -> None:
        # The first waiter, by priority then arrival, whose upstream has
        # room; waiters for a saturated upstream keep their place.
        kept: list[tuple[int, int, str, Deferred[Slot]]] = []
        while self._waiting and self.active < self.total:
            entry = heapq.heappop(self._waiting)
            _, _, upstream, waiter = entry
            if waiter.called:
                continue  # cancelled: its client went away
            if self._free(upstream):
                waiter.callback(self._take(upstream))
            else:
                kept.append(entry)
        for entry in kept:
            heapq.heappush(self._waiting, entry)
