"""
Memory given back to the system once a storm of connections has passed.

A connection that ends leaves its objects in reference cycles (twisted.web's
channel and its requests, a TLS transport and its protocol, their
Deferreds), with the buffers they hold, that only a full collection frees;
and a daemon gone quiet allocates too little for Python to start one,
possibly for hours.  What a collection frees goes back to glibc's malloc,
which keeps the freed pages in its heaps (fragmented, below their top)
until asked with C{malloc_trim(0)}.  Measured: 10 s after 2,500 clients hung
up in the worst ways, the daemon held 65-115 MiB above idle; collected and
trimmed, 10-15.

So once C{after} connections have closed since the last release and the
closing has calmed, the daemon runs one full collection in the reactor
thread (finalizers must run there; it is what Python's own full collection
costs) and then C{malloc_trim(0)} in the disk pool (a foreign call: the GIL
is let go, the reactor goes on).  At most one every C{interval} seconds,
whatever clients do; while a storm goes on Python's own collections run as
usual.  Without glibc (musl, other systems) only the collection runs.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["MemoryReturn", "limit_malloc_arenas", "malloc_trim", "reuse_large_buffers"]

log = Logger()


def malloc_trim() -> Callable[[], object] | None:
    """
    glibc's C{malloc_trim(0)}: every heap's free pages back to the system;
    C{None} where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_M_ARENA_MAX = -8
"""mallopt's parameter for the most malloc arenas (glibc's malloc.h)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
"""mallopt's parameters for the free heap top kept, and the smallest block mmap'd (malloc.h)."""


def limit_malloc_arenas(most: int) -> bool:
    """
    At most C{most} glibc malloc arenas (C{mallopt(M_ARENA_MAX)}), unless
    C{$MALLOC_ARENA_MAX} says otherwise.  glibc gives each new thread an
    arena of its own, up to 8 per core, and each keeps pages a trim leaves
    resident.  The daemon's threads allocate mostly under the GIL, one at a
    time, so sharing costs them little contention.  Call it before threads
    start.  True if set.
    """
    mallopt = None if "MALLOC_ARENA_MAX" in os.environ else _mallopt()
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, most))


def reuse_large_buffers(largest: int = 2 << 20, kept: int = 16 << 20) -> bool:
    """
    Blocks up to C{largest} from malloc's heaps, and up to C{kept} bytes
    free at a heap's top kept there (C{mallopt(M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD)}), unless C{$MALLOC_MMAP_THRESHOLD_} or
    C{$MALLOC_TRIM_THRESHOLD_} say otherwise.

    Blob bytes pass through buffers of about 1 MiB: upstream reads, the
    pieces of a hit read for TLS, their records.  glibc mmaps each such
    block afresh (its threshold starts at 128 KiB and rises only to the
    largest block freed, and a read's block is shrunk to what arrived) or
    trims the heap past twice that, so the kernel faults in and zeroes
    every buffer's pages again.  Measured (perf, 256 MiB cold blob):
    page faults and zeroing were a tenth of the daemon's CPU.  What this
    keeps is given back as before: L{MemoryReturn} trims every heap
    (C{malloc_trim(0)}) once a storm has passed.  True if set.
    """
    told = "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ
    mallopt = None if told else _mallopt()
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, largest)) and bool(mallopt(_M_TRIM_THRESHOLD, kept))


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's C{mallopt(3)}, or C{None} elsewhere."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    found: Callable[[int, int], int] = mallopt
    return found


class MemoryReturn:
    """
    Counts closed connections (L{connection_closed}); once C{after} have
    closed and closing has calmed (at most C{calm} a second over the last
    C{window} seconds), collects and trims: at most once every C{interval}
    seconds.
    """

    def __init__(
        self, reactor: IReactorTime, run_blocking: Callable[[Callable[[], object]], Deferred[object]], *,
        trim: Callable[[], object] | None, after: int = 100, calm: float = 10.0, window: float = 1.0,
        interval: float = 5.0,
    ) -> None:
        self._reactor = reactor
        self._run_blocking = run_blocking
        self._trim = trim
        self._after = after
        self._calm = calm
        self._window = window
        self._interval = interval
        self._closed = 0
        """Connections closed since the last release."""
        self._recent = 0
        """Connections closed since C{_since}."""
        self._since = 0.0
        self._check: IDelayedCall | None = None
        self._last_release = float("-inf")
        self._trimming: Deferred[object] | None = None
        self._stopped = False

    def connection_closed(self) -> None:
        """A client connection ended."""
        if self._stopped:
            return
        self._closed += 1
        self._recent += 1
        if self._closed >= self._after and self._check is None:
            now = self._reactor.seconds()
            self._recent, self._since = 0, now
            delay = max(self._window, self._last_release + self._interval - now)
            self._check = self._reactor.callLater(delay, self._calmed)

    def _calmed(self) -> None:
        """Release if the storm has calmed; else look again a window later."""
        now = self._reactor.seconds()
        rate = self._recent / max(now - self._since, self._window)
        self._recent, self._since = 0, now
        if rate > self._calm:
            self._check = self._reactor.callLater(self._window, self._calmed)
            return
        self._check = None
        self._release(now)

    def _release(self, now: float) -> None:
        closed, self._closed = self._closed, 0
        self._last_release = now
        started = time.monotonic()
        freed = gc.collect()
        log.debug("{closed} connections closed: collected {freed} objects in {seconds:.3f}s",
                  closed=closed, freed=freed, seconds=time.monotonic() - started)
        if self._trim is not None and self._trimming is None:
            self._trimming = self._run_blocking(self._trim)
            self._trimming.addErrback(lambda failure: log.failure("malloc_trim failed", failure))
            self._trimming.addBoth(self._trimmed)

    def _trimmed(self, result: object) -> None:
        self._trimming = None

    def stop(self) -> None:
        """No release pending, nor any later: the daemon is stopping."""
        self._stopped = True
        if self._check is not None and self._check.active():
            self._check.cancel()
        self._check = None
