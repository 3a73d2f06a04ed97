"""
Access proofs shared by the fleet (L{ocicache._oci._access.SharedProofs}):
C{fleet:proof:<digest>}, a set of C{<upstream>/<repo>} that showed the
upstream holds that digest.  One node's proof spares the others their
upstream C{HEAD}.  Each set lives L{PROOF_TTL} after its last addition,
so Redis holds no more than the fleet proved lately.

Never in the way: while Redis is gone, C{has} answers C{False} at once
(the node proves it itself, as a single node does) and C{put} is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ._redis import Redis, RedisUnavailable

__all__ = ["PROOF_TTL", "RedisProofs"]

log = Logger()

PROOF_TTL = 24 * 3600
"""Seconds a digest's proofs are kept after the last one, as L{ocicache._oci._access.TTL}."""


class RedisProofs:
    def __init__(self, redis: Redis, up: Callable[[], bool]) -> None:
        """@param up: whether Redis answers now (the fleet's heartbeat says)."""
        self._redis = redis
        self._up = up

    async def has(self, digest: str, upstream: str, repo: str) -> bool:
        if not self._up():
            return False
        try:
            return await self._redis.command("SISMEMBER", f"fleet:proof:{digest}", f"{upstream}/{repo}") == 1
        except RedisUnavailable:
            return False

    def put(self, digest: str, upstream: str, repo: str) -> None:
        if self._up():
            Deferred.fromCoroutine(self._put(digest, upstream, repo))

    async def _put(self, digest: str, upstream: str, repo: str) -> None:
        try:
            await self._redis.command("SADD", f"fleet:proof:{digest}", f"{upstream}/{repo}")
            await self._redis.command("EXPIRE", f"fleet:proof:{digest}", PROOF_TTL)
        except RedisUnavailable:
            pass  # the proof stays local; another node proves it itself
        except Exception:
            log.failure("Could not share an access proof")
