"""
The records of mutable files shared by the fleet
(L{ocicache._files._mutable.SharedRecords}), so that a C{InRelease} or a
C{repomd.xml} one node fetched or confirmed with a conditional GET is
fresh for every node within its remote's C{mutable_ttl}:

  - C{fleet:file:<sha256 of remote and path>}: the record (which version
    is current, its validators, when the remote last confirmed it), kept
    L{RECORD_GRACE} seconds past the TTL it was written under.

The revalidation itself takes the fill lock of the record's name (a turn,
L{ocicache._fleet._fleet.FleetArea}); the record is written before the
turn ends, down the one connection, so a node that takes the turn next
finds it.  Redis is not trusted with content: a record names a version by
its key, whose bytes are fetched and checked as any file's are.  Never in
the way: while Redis is gone, a lookup answers "none" at once and a write
is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._files._key import record_key
from .._files._mutable import Record
from ._redis import Redis, RedisUnavailable, text

__all__ = ["RECORD_GRACE", "RedisRecords"]

log = Logger()

RECORD_GRACE = 60
"""Seconds a shared record is kept past the C{mutable_ttl} it was written under."""


def _key(remote: str, path: str) -> str:
    return f"fleet:file:{record_key(remote, path).encoded}"


class RedisRecords:
    def __init__(self, redis: Redis, up: Callable[[], bool]) -> None:
        """@param up: whether Redis answers now (the fleet's heartbeat says)."""
        self._redis = redis
        self._up = up

    async def get(self, remote: str, path: str) -> Record | None:
        if not self._up():
            return None
        try:
            value = text(await self._redis.command("GET", _key(remote, path)))
        except RedisUnavailable:
            return None
        return None if value is None else Record.decode(value.encode("utf-8"))

    def put(self, remote: str, path: str, record: Record, ttl: float) -> None:
        if not self._up():
            return
        seconds = max(1, math.ceil(ttl)) + RECORD_GRACE
        # One command, sent now: it lands before the end of the turn.
        sent = Deferred.fromCoroutine(self._redis.command("SET", _key(remote, path), record.encode().decode("utf-8"),
                                                          "EX", seconds))
        sent.addErrback(self._dropped)

    def _dropped(self, failure: Failure) -> None:
        # Kept locally; another node asks the remote itself.
        log.debug("A file's record was not shared: {error}", error=failure.getErrorMessage())
