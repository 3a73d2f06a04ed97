"""
Bounded upstream work: at most so many downloads at once, overall and per
upstream, so that no client (or crowd of clients) can make the daemon
fetch without limit.  Requests past the limit wait in a bounded queue,
manifests before blobs (a pull needs its manifest before any layer);
past the queue they are refused, and the client is told to come back.

Several processes on one store (C{[server] workers}) share the bounds:
with L{SlotFiles}, a slot is also a C{flock}ed file that every process
sees, so the limits hold for the host; a process whose waiters find every
slot of the host taken by others looks again every L{HOST_POLL} seconds
(another process's release cannot wake it).  Each process orders its own
queue; between processes the first to look gets the slot.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .._storage._slot_files import SlotFiles

__all__ = ["DEFAULT_DOWNLOADS", "DEFAULT_PER_UPSTREAM", "DEFAULT_QUEUE", "HOST_POLL", "Busy", "Priority", "Slot",
           "Slots"]

log = Logger()

DEFAULT_DOWNLOADS = 32
"""Upstream fetches at once, all upstreams together."""

DEFAULT_PER_UPSTREAM = 16
"""Upstream fetches at once from one upstream (its connection pool's size)."""

DEFAULT_QUEUE = 256
"""Requests that may wait for a slot before the next ones are refused."""

HOST_POLL = 0.05
"""Seconds between looks for a slot another process on the store gave back."""

ALL = "all"
"""The slot files' name of the bound of all upstreams together."""


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


class _HostFull(Exception):
    """
    Other processes on the store hold every slot of the host that a fetch
    needs: every slot of all upstreams (C{everything}), or of its own.
    """

    def __init__(self, everything: bool) -> None:
        super().__init__()
        self.everything = everything


class Slot:
    """One upstream fetch under way; L{release} it when it is done."""

    def __init__(self, slots: Slots, upstream: str, files: tuple[int, int] | None = None) -> None:
        self._slots = slots
        self._upstream = upstream
        self._files = files
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._upstream, self._files)


class Slots:
    def __init__(self, total: int, queue: int, per_upstream: Callable[[str], int] = lambda name: DEFAULT_PER_UPSTREAM,
                 retry_after: int = 1, host: tuple[SlotFiles, IReactorTime] | None = None) -> None:
        """
        @param total: fetches at once, all upstreams together.
        @param queue: requests that may wait; past that, L{Busy}.
        @param per_upstream: fetches at once from the upstream named.
        @param host: the slot files of the store other processes share,
            and the clock to look at them again by: the bounds are then
            the host's.
        """
        self._host = host
        self._poll: IDelayedCall | None = None
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
            try:
                return succeed(self._take(upstream))
            except _HostFull:
                pass  # it waits, and looks again
        if self.waiting >= self.queue:
            raise Busy(f"{self.active} upstream downloads are running and {self.waiting} waiting",
                       self._retry_after)
        waiter: Deferred[Slot] = Deferred()
        heapq.heappush(self._waiting, (int(priority), next(self._order), upstream, waiter))
        self._look_again()
        return waiter

    def _free(self, upstream: str) -> bool:
        return self.active < self.total and self._by_upstream.get(upstream, 0) < self.per_upstream(upstream)

    def _take(self, upstream: str) -> Slot:
        """A slot; L{_HostFull} when other processes on the store hold the host's."""
        files = self._take_files(upstream)
        self.active += 1
        self._by_upstream[upstream] = self._by_upstream.get(upstream, 0) + 1
        return Slot(self, upstream, files)

    def _take_files(self, upstream: str) -> tuple[int, int] | None:
        """
        The host's slots of all upstreams and of C{upstream}, or C{None}
        when there are no host files to take; L{_HostFull} when other
        processes hold them.
        """
        if self._host is None:
            return None
        files, _ = self._host
        try:
            every = files.take(ALL, self.total)
            if every is None:
                raise _HostFull(everything=True)
            one = files.take(upstream, self.per_upstream(upstream))
        except OSError as e:
            # Bounded per process, as alone: better than no fetch at all.
            log.warn("Cannot use the store's download slot files: {error}", error=str(e))
            return None
        if one is None:
            files.give(ALL, every)
            raise _HostFull(everything=False)
        return every, one

    def _release(self, upstream: str, files: tuple[int, int] | None) -> None:
        if files is not None and self._host is not None:
            host, _ = self._host
            host.give(upstream, files[1])
            host.give(ALL, files[0])
        self.active -= 1
        left = self._by_upstream[upstream] - 1
        if left:
            self._by_upstream[upstream] = left
        else:
            del self._by_upstream[upstream]
        self._wake()

    def _look_again(self) -> None:
        """While some wait, with the host's slots shared: look for one given back in a while."""
        if self._host is None or self._poll is not None or not self.waiting:
            return
        _, clock = self._host
        self._poll = clock.callLater(HOST_POLL, self._polled)

    def _polled(self) -> None:
        self._poll = None
        self._wake()
        self._look_again()

    def _wake(self) -> None:
        # The first waiter, by priority then arrival, whose upstream has
        # room; waiters for a saturated upstream keep their place.
        kept: list[tuple[int, int, str, Deferred[Slot]]] = []
        while self._waiting and self.active < self.total:
            entry = heapq.heappop(self._waiting)
            _, _, upstream, waiter = entry
            if waiter.called:
                continue  # cancelled: its client went away
            if not self._free(upstream):
                kept.append(entry)
                continue
            try:
                slot = self._take(upstream)
            except _HostFull as full:
                kept.append(entry)
                if full.everything:
                    break  # no waiter can have one now
                continue
            waiter.callback(slot)
        for entry in kept:
            heapq.heappush(self._waiting, entry)
