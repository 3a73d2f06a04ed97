"""
Tags and manifests shared by the fleet (L{ocicache._oci._manifests.SharedManifests}),
so that however many nodes are asked for one tag, the upstream sees one
revalidation C{HEAD} per C{tag_ttl} and one manifest C{GET} (a Docker Hub
pull) per change:

  - C{fleet:tag:<upstream>/<repo>:<variant key>}: what the tag's variant
    resolves to (digest, media type) and when a node last checked it
    against the upstream, kept L{TAG_GRACE} seconds past the C{tag_ttl};
  - C{fleet:manifest:<digest>}: the manifest's media type and bytes
    (base64: txredisapi decodes replies as UTF-8, a manifest is bytes),
    kept L{MANIFEST_TTL} after it was last shared;
  - C{fleet:turn:<upstream>/<repo>:<variant key or digest>}: which node
    is asking the upstream about it right now (C{SET NX}, L{TURN_TTL}),
    so that nodes asked at the same instant wait for its answer rather
    than each asking too.  A hint, not a lock: a node that waits too long
    asks the upstream itself.

The writes of an answer and the end of the turn go, in that order, down
the one connection (txredisapi's lazy connection has one), so a node that
sees the turn end finds the answer.

Redis is not trusted with content: the cache checks a shared manifest's
digest before serving it.  Never in the way: while Redis is gone, a lookup
answers "unknown" at once (the node asks the upstream, as a single node
does) and a write is dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .._oci._manifests import MAX_MANIFEST_SIZE, SharedTag, no_turn
from .._spec._reference import Digest
from ._lock import COMPARE_AND_DELETE
from ._redis import Redis, RedisUnavailable, text

__all__ = ["MANIFEST_TTL", "TAG_GRACE", "RedisManifests"]

log = Logger()

TAG_GRACE = 60
"""Seconds a shared tag entry is kept past the C{tag_ttl} it was written under."""

MANIFEST_TTL = 24 * 3600
"""Seconds a shared manifest is kept after a node last shared it."""

TURN_TTL = 10
"""Seconds a turn outlives a node that died while asking the upstream."""

def tag_key(upstream: str, repo: str, key: str) -> str:
    """Where a tag's variant (L{ocicache._oci._manifests.variant_key}) is shared."""
    return f"fleet:tag:{upstream}/{repo}:{key}"


def manifest_key(digest: Digest) -> str:
    return f"fleet:manifest:{digest}"


def turn_key(upstream: str, repo: str, key: str) -> str:
    return f"fleet:turn:{upstream}/{repo}:{key}"


def _parse_tag(value: str | None) -> SharedTag | None:
    """A shared tag entry, or C{None} if there is none or it is not one (never trusted as it is)."""
    if value is None:
        return None
    try:
        entry = json.loads(value)
        tag = SharedTag(Digest.parse(entry["digest"]), str(entry["media_type"]), float(entry["checked_at"]))
    except (ValueError, TypeError, KeyError):
        return None
    return tag if math.isfinite(tag.checked_at) else None


def _parse_manifest(value: str | None) -> tuple[str, bytes] | None:
    if value is None:
        return None
    try:
        entry = json.loads(value)
        return str(entry["media_type"]), base64.b64decode(entry["body"], validate=True)
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None


class RedisManifests:
    def __init__(self, redis: Redis, up: Callable[[], bool], node: str) -> None:
        """
        @param up: whether Redis answers now (the fleet's heartbeat says).
        @param node: this node's name, in the turns it takes.
        """
        self._redis = redis
        self._up = up
        self._node = node
        self._turns = 0

    async def tag(self, upstream: str, repo: str, key: str) -> SharedTag | None:
        if not self._up():
            return None
        try:
            return _parse_tag(text(await self._redis.command("GET", tag_key(upstream, repo, key))))
        except RedisUnavailable:
            return None

    def put_tag(self, upstream: str, repo: str, key: str, tag: SharedTag, ttl: float) -> None:
        if not self._up():
            return
        value = json.dumps({"digest": str(tag.digest), "media_type": tag.media_type, "checked_at": tag.checked_at})
        seconds = max(1, math.ceil(ttl)) + TAG_GRACE
        self._background(self._redis.command("SET", tag_key(upstream, repo, key), value, "EX", seconds))

    async def manifest(self, digest: Digest) -> tuple[str, bytes] | None:
        if not self._up():
            return None
        try:
            return _parse_manifest(text(await self._redis.command("GET", manifest_key(digest))))
        except RedisUnavailable:
            return None

    def put_manifest(self, digest: Digest, media_type: str, body: bytes) -> None:
        if len(body) <= MAX_MANIFEST_SIZE and self._up():
            # One command, sent now: it lands before the end of the turn.
            value = json.dumps({"media_type": media_type, "body": base64.b64encode(body).decode("ascii")})
            self._background(self._redis.command("SET", manifest_key(digest), value, "EX", MANIFEST_TTL))

    async def turn(self, upstream: str, repo: str, key: str) -> Callable[[], None] | None:
        if not self._up():
            return no_turn
        self._turns += 1
        where, mine = turn_key(upstream, repo, key), f"{self._node}|{self._turns}"
        try:
            taken = await self._redis.command("SET", where, mine, "NX", "EX", TURN_TTL)
        except RedisUnavailable:
            return no_turn
        if taken is None:
            return None
        # Ended only if it is still this one, not a later node's after it expired.
        return lambda: self._background(self._redis.script(COMPARE_AND_DELETE, [where], [mine]))

    def _background(self, work: Coroutine[Any, Any, object]) -> None:
        Deferred.fromCoroutine(self._quietly(work))

    async def _quietly(self, work: Awaitable[object]) -> None:
        try:
            await work
        except RedisUnavailable:
            pass  # kept locally; another node asks the upstream itself
        except Exception:
            log.failure("Could not share a tag or manifest")

