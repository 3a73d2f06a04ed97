"""
A bounded, expiring memo of credentials already proven, so that the
requests of one pull (tens of manifests and blobs with the same
C{Authorization}) pay for one bcrypt or one signature check, not one each.

Keys are digests the caller makes (an HMAC or a SHA-256 of the
credentials), never the credentials themselves.  Only successes are
remembered, each until its own deadline, and at most C{size} of them:
the least recently used go first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

__all__ = ["Memo"]

V = TypeVar("V")


class Memo(Generic[V]):
    """Digest -> value, each until its deadline, at most C{size} entries."""

    def __init__(self, clock: IReactorTime, size: int) -> None:
        self._clock = clock
        self._size = size
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        deadline, value = entry
        if deadline <= self._clock.seconds():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: V, until: float) -> None:
        self._entries[key] = (until, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
