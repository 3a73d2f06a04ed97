"""
The fleet's directory in Redis: where each node's internal endpoint is,
which nodes hold a digest in their store, and the size they verified.

Each node announces itself (C{fleet:node:<name>} = its peer URL) every
heartbeat, with a TTL of a few heartbeats, so a node that is gone drops
out by itself.  A committed blob adds the node to C{fleet:have:<digest>};
that set is a hint, not the truth: a peer that no longer holds the blob
answers 404, and the asking node fetches it upstream.

Other kinds of entry (git responses) share the lock and the directory
under names of their own (L{entry_name}): C{<area>/<digest>}.
"""

from __future__ import annotations

from .._spec._reference import Digest
from ._redis import Redis, text

__all__ = ["BLOBS", "HAVE_TTL", "NodeDirectory", "entry_name"]

BLOBS = "blobs"
"""The area of blobs: their names in Redis are their digests alone."""

HAVE_TTL = 24 * 3600
"""Seconds a digest's holders are remembered after its last commit on a node."""


def entry_name(area: str, digest: Digest) -> str:
    """
    What an entry is called in Redis: a blob by its digest (as always), an
    entry of another area (a constant of the code, e.g. C{git}) by
    C{<area>/<digest>}, so that no two kinds share a lock or a holder set.
    """
    return str(digest) if area == BLOBS else f"{area}/{digest}"


class NodeDirectory:
    def __init__(self, redis: Redis, node: str, peer_url: str, ttl: float) -> None:
        self._redis = redis
        self.node = node
        self._peer_url = peer_url
        self._ttl_ms = int(ttl * 1000)

    async def announce(self) -> None:
        """Say where this node is, for a few heartbeats.  Raises L{RedisUnavailable}."""
        await self._redis.command("SET", f"fleet:node:{self.node}", self._peer_url, "PX", self._ttl_ms)

    async def peer_url(self, node: str) -> str | None:
        """Where C{node}'s internal endpoint is, if it is alive."""
        return text(await self._redis.command("GET", f"fleet:node:{node}"))

    async def holders(self, digest: Digest, area: str = BLOBS) -> list[str]:
        """The other nodes said to hold C{digest} (of C{area}) in their store."""
        members = await self._redis.command("SMEMBERS", f"fleet:have:{entry_name(area, digest)}")
        names = [text(member) for member in members] if isinstance(members, list) else []
        return [name for name in names if name is not None and name != self.node]

    async def holding(self, digest: Digest, size: int, area: str = BLOBS) -> None:
        """This node committed C{digest} (of C{area}), verified to have C{size} bytes."""
        name = entry_name(area, digest)
        await self._redis.command("SADD", f"fleet:have:{name}", self.node)
        await self._redis.command("EXPIRE", f"fleet:have:{name}", HAVE_TTL)
        if area == BLOBS:
            await self._redis.command("SET", f"fleet:size:{name}", size, "EX", HAVE_TTL)

    async def size(self, digest: Digest) -> int | None:
        """The size a node verified C{digest} has, if one did lately."""
        size = text(await self._redis.command("GET", f"fleet:size:{digest}"))
        return int(size) if size is not None and size.isdigit() else None
