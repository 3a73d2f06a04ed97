"""
The bucket's eviction bookkeeping, shared by the nodes on one S3 bucket
(L{ocicache._storage._bucket.BucketBook}): issue 14's "eviction and TTL
work over the bucket as they do over the disk, with the metadata as their
index", the index's read times kept in Redis for the whole fleet.

  - C{fleet:bucket:access}, a sorted set: digest to the latest read by any
    node (POSIX seconds), added to from each node's janitor pass with
    C{ZADD GT}, so a node's late batch never moves a read back in time.
  - C{fleet:bucket:evictor} = C{<node>|<fence>}, C{SET NX PX} as a fill
    lock (L{ocicache._fleet._lock}), the fence from the same counter: the
    one node whose pass expires and evicts; renewed while it does.
  - C{fleet:bucket:changes}, a stream of the objects completed in the
    bucket (with their size) and deleted from it (by eviction, expiry, or
    as corrupt), and by which node, capped at L{CHANGES_KEPT} entries: each
    node reads what is new on its pass and adds those to its index, or
    drops them, so that its size of the bucket counts what the others
    stored and not what is gone.
  - C{fleet:bucket:keep:<node>}, a set: the blobs that node's eviction
    and expiry must leave (its pins' closures, the images being pulled
    through it), replaced whole on each of its passes, and named in
    C{fleet:bucket:keepers}; both live L{KEEP_TTL} after the last pass.
    Every node's eviction leaves the union: a node's pins hold in the
    bucket whichever node evicts.

Never in the way: while Redis is gone, L{RedisBucketBook.begin} answers
C{None} at once (the node's pass is a single node's) and changes are not
recorded (the other nodes find an object gone at their next C{GET}, and
one they did not hear of at their next C{HEAD} or start).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ._lock import Lease
from ._redis import Redis, RedisUnavailable, text

__all__ = [
    "ACCESS", "ACCESS_KEPT", "BATCH", "CHANGES", "CHANGES_KEPT", "EVICTOR", "EVICTOR_TTL", "KEEP", "KEEPERS",
    "KEEP_TTL", "RedisBucketBook",
]

log = Logger()

ACCESS = "fleet:bucket:access"
EVICTOR = "fleet:bucket:evictor"
CHANGES = "fleet:bucket:changes"
KEEP = "fleet:bucket:keep:"
KEEPERS = "fleet:bucket:keepers"

KEEP_TTL = 3600.0
"""Seconds a node's protected blobs outlive its last pass (a node that stopped, or is cut off)."""

EVICTOR_TTL = 30.0
"""Seconds the evictor's turn outlives a node that died holding it; renewed every third."""

CHANGES_KEPT = 100_000
"""Changes the stream keeps (about: C{MAXLEN ~}); a node that misses some finds out at its next C{GET} or C{HEAD}."""

ACCESS_KEPT = 30 * 86400.0
"""
Seconds a read stays in the book with no later one: the evictor trims
older ones (those of objects removed while Redis was down, or a read
batched after its object's removal), so the set holds no more than the
bucket did lately.
"""

BATCH = 500
"""Digests per command, so that no one command holds Redis long."""

LOOKBACK = 60.0
"""
Seconds before this node started whose changes its first pass reads:
those since it listed the bucket at recovery, with room for the clocks of
the node and Redis to differ.
"""


class _Pass:
    def __init__(self, book: RedisBucketBook, lease: Lease | None, added: dict[str, int], gone: list[str]) -> None:
        self._book = book
        self._lease = lease
        self.added = added
        self.gone = gone

    @property
    def evictor(self) -> bool:
        return self._lease is not None

    async def last_access(self, digests: Sequence[str]) -> Mapping[str, float] | None:
        return await self._book.last_access(digests)

    async def holds(self) -> bool:
        lease = self._lease
        if lease is None or lease.lost:
            return False
        try:
            return text(await self._book.redis.command("GET", EVICTOR)) == lease.value
        except RedisUnavailable as e:
            # Every node is on its own now: this one too, as a single node.
            self._book.alone(e)
            return True

    async def end(self) -> None:
        if self._lease is not None:
            await self._lease.release()


class RedisBucketBook:
    """
    The fleet's book of one bucket, in Redis.
    """

    def __init__(self, redis: Redis, reactor: IReactorTime, node: str, up: Callable[[], bool],
                 ttl: float = EVICTOR_TTL) -> None:
        """@param up: whether Redis answers now (the fleet's heartbeat says)."""
        self.redis = redis
        self._reactor = reactor
        self._node = node
        self._up = up
        self._ttl = ttl
        self._cursor = f"{max(0, int((reactor.seconds() - LOOKBACK) * 1000))}-0"
        """The last change read: its stream ID, or an exclusive start time."""
        self._alone = False

    def alone(self, error: RedisUnavailable) -> None:
        """A command failed: this pass judges alone (said once, until a pass works again)."""
        if not self._alone:
            self._alone = True
            log.warn("S3 store janitor: {error}: expiring and evicting on this node's reads alone",
                     error=str(error))

    async def begin(self, accesses: Mapping[str, float], protected: Collection[str] = ()) -> _Pass | None:
        if not self._up():
            return None  # the fleet says Redis is down, once
        lease: Lease | None = None
        try:
            items = list(accesses.items())
            for start in range(0, len(items), BATCH):
                pairs: list[str | int] = []
                for digest, at in items[start:start + BATCH]:
                    pairs += [repr(float(at)), digest]
                await self.redis.command("ZADD", ACCESS, "GT", *pairs)
            await self._keep(protected)
            fence = text(await self.redis.command("INCR", "fleet:fence"))
            value = f"{self._node}|{fence}"
            if await self.redis.command("SET", EVICTOR, value, "NX", "PX", int(self._ttl * 1000)) is not None:
                lease = Lease(self.redis, self._reactor, EVICTOR, value, self._ttl, "The bucket's evictor turn")
                await self.redis.command("ZREMRANGEBYSCORE", ACCESS, "-inf",
                                         repr(self._reactor.seconds() - ACCESS_KEPT))
            # Read after taking the turn: the previous holder recorded its
            # removals before it gave the turn back.
            added, gone = await self._changes()
        except RedisUnavailable as e:
            if lease is not None:
                await lease.release()
            self.alone(e)
            return None
        if self._alone:
            self._alone = False
            log.info("S3 store janitor: the fleet's book in Redis at {where} answers again", where=self.redis.where)
        return _Pass(self, lease, added, gone)

    async def _keep(self, protected: Collection[str]) -> None:
        """Replace this node's protected set, at once (a set built aside, then renamed over it)."""
        key = KEEP + self._node
        ttl_ms = int(KEEP_TTL * 1000)
        if not protected:
            await self.redis.command("DEL", key)
        else:
            building = f"{key}:building"
            await self.redis.command("DEL", building)
            digests = list(protected)
            for start in range(0, len(digests), BATCH):
                await self.redis.command("SADD", building, *digests[start:start + BATCH])
            await self.redis.command("RENAME", building, key)
            await self.redis.command("PEXPIRE", key, ttl_ms)
        await self.redis.command("SADD", KEEPERS, self._node)
        await self.redis.command("PEXPIRE", KEEPERS, ttl_ms)

    async def protected(self) -> set[str] | None:
        if not self._up():
            return None
        try:
            nodes = await self.redis.command("SMEMBERS", KEEPERS)
            keys = [KEEP + name for name in (text(node) for node in (nodes if isinstance(nodes, list) else []))
                    if name is not None]
            if not keys:
                return set()
            members = await self.redis.command("SUNION", *keys)
        except RedisUnavailable as e:
            self.alone(e)
            return None
        return {name for name in (text(member) for member in (members if isinstance(members, list) else []))
                if name is not None}

    async def _changes(self) -> tuple[dict[str, int], list[str]]:
        """What other nodes completed (digest to size) and deleted since the last read; the later change wins."""
        added: dict[str, int] = {}
        gone: dict[str, None] = {}
        while True:
            reply = await self.redis.command("XRANGE", CHANGES, f"({self._cursor}", "+", "COUNT", BATCH)
            entries = reply if isinstance(reply, list) else []
            for entry in entries:
                ident, fields = _entry(entry)
                if ident is None:
                    continue
                self._cursor = ident
                digest, size = fields.get("d"), fields.get("s", "")
                if fields.get("n") == self._node or digest is None:
                    continue
                if size.isdigit():
                    added[digest] = int(size)
                    gone.pop(digest, None)
                else:
                    gone[digest] = None
                    added.pop(digest, None)
            if len(entries) < BATCH:
                return added, list(gone)

    async def last_access(self, digests: Sequence[str]) -> Mapping[str, float] | None:
        if not self._up():
            return None
        times: dict[str, float] = {}
        try:
            for start in range(0, len(digests), BATCH):
                chunk = list(digests[start:start + BATCH])
                scores = await self.redis.command("ZMSCORE", ACCESS, *chunk)
                for digest, score in zip(chunk, scores if isinstance(scores, list) else [], strict=False):
                    value = text(score)
                    if value is not None:
                        times[digest] = float(value)
        except RedisUnavailable as e:
            self.alone(e)
            return None
        return times

    async def added(self, digest: str, size: int) -> None:
        if not self._up():
            return
        try:
            await self.redis.command("XADD", CHANGES, "MAXLEN", "~", CHANGES_KEPT, "*",
                                     "d", digest, "n", self._node, "s", size)
        except RedisUnavailable as e:
            self.alone(e)

    async def removed(self, digests: Sequence[str]) -> None:
        if not self._up() or not digests:
            return
        try:
            for digest in digests:
                await self.redis.command("XADD", CHANGES, "MAXLEN", "~", CHANGES_KEPT, "*",
                                         "d", digest, "n", self._node)
            for start in range(0, len(digests), BATCH):
                await self.redis.command("ZREM", ACCESS, *digests[start:start + BATCH])
        except RedisUnavailable as e:
            self.alone(e)


def _entry(entry: Any) -> tuple[str | None, dict[str, str]]:
    """A stream entry, C{[id, [field, value, ...]]}, as its ID and fields."""
    if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], list):
        return None, {}
    ident = text(entry[0])
    values = [text(value) or "" for value in entry[1]]
    return ident, dict(zip(values[::2], values[1::2], strict=False))
