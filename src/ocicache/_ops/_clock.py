"""
The daemon's clocks, one job each:

- the reactor (L{twisted.internet.interfaces.IReactorTime}: C{callLater},
  C{seconds}) for what happens at a time: timers, TTLs, freshness, back-offs;
  tests drive a fake one;
- the wall clock (C{time.time()}) only for timestamps that outlive the
  process: the metadata database's C{created_at} and C{last_access}, which
  the janitor and C{ocicache stats} read after a restart;
- L{Stopwatch}, on the monotonic clock, for how long something took: a
  request's duration, an upstream request's, a slow request head.  It never
  jumps when the wall clock is set.
"""

from __future__ import annotations

import time

__all__ = ["Stopwatch"]


class Stopwatch:
    """Started when made; L{elapsed} seconds since, on the monotonic clock."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started
