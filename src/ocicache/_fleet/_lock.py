"""
The fill lock: at most one node of the fleet fetches a digest from the
upstream at a time.

C{SET fleet:lock:<digest> <node>|<fence> NX PX <ttl>} takes it.  The fence
comes from C{INCR fleet:fence}, so every holding has its own, increasing
value: a holder that stalled past its TTL and came back cannot renew or
release the lock another node took meanwhile, because the compare-and-set
scripts below only touch a lock whose value is still theirs.  The holder
renews it (every third of the TTL) while its download runs and deletes it
when the download settles; a holder that dies leaves it to expire.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spec._reference import Digest
from ._nodes import BLOBS, entry_name
from ._redis import Redis, RedisUnavailable, text

__all__ = ["COMPARE_AND_DELETE", "FillLock", "Holder", "Lease"]

log = Logger()

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
"""Extend the lock only if it is still this holding's."""

COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Delete a key only if it still holds this value: a lock, or a turn, only if it is still this holding's."""


def _key(digest: Digest, area: str) -> str:
    return f"fleet:lock:{entry_name(area, digest)}"


@frozen
class Holder:
    """Another holding of a digest's lock: which node, and its fence."""

    node: str
    fence: int


class Lease:
    """
    This node's holding of one lock (a digest's fill lock, or the
    bucket's evictor turn: L{ocicache._fleet._bucket_book}), renewed until
    L{release}.
    """

    def __init__(self, redis: Redis, reactor: IReactorTime, key: str, value: str, ttl: float, what: str) -> None:
        """@param what: the lock, for log lines."""
        self.key = key
        self.what = what
        self.value = value
        self._redis = redis
        self._ttl_ms = int(ttl * 1000)
        self._renewal = LoopingCall(lambda: Deferred.fromCoroutine(self._renew()))
        self._renewal.clock = reactor
        self._renewal.start(ttl / 3, now=False).addErrback(self._renewal_broke)
        self.lost = False
        """Whether the lock expired under this holding (a stall longer than the TTL)."""

    async def _renew(self) -> None:
        try:
            renewed = await self._redis.script(_RENEW, [self.key], [self.value, self._ttl_ms])
        except RedisUnavailable:
            return  # the next renewal tries again; the TTL covers two misses
        if not renewed and not self.lost:
            self.lost = True
            log.warn("{what} expired while this node held it; another node may take it too", what=self.what)

    def _renewal_broke(self, failure: Failure) -> None:
        log.failure("Renewing {what} broke", failure, what=self.what)

    async def release(self) -> None:
        """Stop renewing, and delete the lock if it is still this holding's."""
        if self._renewal.running:
            self._renewal.stop()
        try:
            await self._redis.script(COMPARE_AND_DELETE, [self.key], [self.value])
        except RedisUnavailable:
            pass  # it expires by itself


class FillLock:
    """
    Takes digests' fill locks for this node.
    """

    def __init__(self, redis: Redis, reactor: IReactorTime, node: str, ttl: float) -> None:
        self._redis = redis
        self._reactor = reactor
        self._node = node
        self._ttl = ttl

    async def take(self, digest: Digest, area: str = BLOBS) -> Lease | Holder:
        """
        The lock for this node (a L{Lease}), or who holds it now.  Raises
        L{RedisUnavailable}.
        """
        while True:
            fence = text(await self._redis.command("INCR", "fleet:fence"))
            value = f"{self._node}|{fence}"
            taken = await self._redis.command("SET", _key(digest, area), value, "NX", "PX", int(self._ttl * 1000))
            if taken is not None:
                return Lease(self._redis, self._reactor, _key(digest, area), value, self._ttl,
                             f"The fill lock of {entry_name(area, digest)}")
            held = text(await self._redis.command("GET", _key(digest, area)))
            if held is None:
                continue  # released between the two: try again
            node, _, fence_text = held.rpartition("|")
            return Holder(node, int(fence_text) if fence_text.isdigit() else 0)
