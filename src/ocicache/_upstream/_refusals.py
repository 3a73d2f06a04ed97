"""
An upstream's refusals of ocicache's credentials, remembered with a
growing backoff.

A wrong password sent on every client request is a failed login per
request at the upstream's token server: on Docker Hub, a path to locking
the account out.  Once refused, ocicache does not log in again with the
same credentials for the same key until the backoff has passed, and each
refusal that follows doubles it.  Keys carry the credentials, so new
credentials (a SIGHUP that changes them, a credential helper's rotation)
are tried at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from attrs import frozen

__all__ = ["Refusals"]

# The first wait after a refusal, and the longest: a wrong password costs
# at most 3 failed logins in its first minute, then one per 10 minutes.
FIRST_BACKOFF = 10.0
LONGEST_BACKOFF = 600.0


class _Clock(Protocol):
    def seconds(self) -> float:
        """
        The current time in seconds.
        """


@frozen
class _Refusal:
    until: float
    backoff: float


class Refusals:
    """
    Keys whose credentials an upstream refused, each until its backoff
    has passed; at most C{max_entries}, the oldest dropped first.
    """

    def __init__(self, clock: _Clock, max_entries: int = 1024) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._refusals: dict[Hashable, _Refusal] = {}

    def __repr__(self) -> str:
        return f"<Refusals of {len(self._refusals)} keys>"

    def refused_for(self, key: Hashable) -> float:
        """
        The seconds left before C{key}'s credentials may be tried again:
        C{0} when they may be tried now.
        """
        refusal = self._refusals.get(key)
        if refusal is None:
            return 0.0
        return max(0.0, refusal.until - self._clock.seconds())

    def refuse(self, key: Hashable) -> float:
        """
        Remember that the upstream refused C{key}'s credentials: not again
        for the first backoff, or twice the last one when it was refused
        before.  Return the backoff.
        """
        last = self._refusals.pop(key, None)
        backoff = FIRST_BACKOFF if last is None else min(LONGEST_BACKOFF, 2 * last.backoff)
        while len(self._refusals) >= self._max_entries:
            del self._refusals[next(iter(self._refusals))]
        self._refusals[key] = _Refusal(self._clock.seconds() + backoff, backoff)
        return backoff

    def accept(self, key: Hashable) -> None:
        """
        The upstream accepted C{key}'s credentials: forget its refusals.
        """
        self._refusals.pop(key, None)
