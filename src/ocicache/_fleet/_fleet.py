"""
The fleet step of the blob lookup (L{ocicache._oci._blobs.FleetStep}):
across nodes, one upstream fetch per digest.

The first node to miss a digest takes its fill lock (L{_lock}) and
fetches it upstream, unless a node already holds it whole (then it is
streamed from there).  A node that misses while another holds the lock
streams the body from that node's internal endpoint (L{_internal}) into
its own download, so its clients get bytes while the filler's upstream
body is still arriving.  When the filler cannot be reached (it died), the
node polls until its lock expires and one node takes over; a holder that
stays unreachable past twice the lock TTL (a partition) is given up on and
the upstream asked directly.

When Redis does not answer, every node falls back to local singleflight;
the change is logged once each way, and a heartbeat finds Redis again.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from .._oci._blobs import FleetClaim
from .._ops._config import FleetConfig
from .._spec._reference import Digest
from ._lock import FillLock, Lease
from ._nodes import BLOBS, NodeDirectory, entry_name
from ._peer import PeerClient
from ._redis import Redis, RedisUnavailable

__all__ = ["HEARTBEAT", "POLL", "Fleet", "FleetArea"]

log = Logger()

HEARTBEAT = 1.0
"""Seconds between announcements of this node, which also probe Redis."""

POLL = 0.2
"""Seconds between tries while another node holds a lock but serves nothing yet."""


class _Claim:
    def __init__(self, fleet: Fleet, digest: Digest, lease: Lease | None, peer: IResponse | None,
                 area: str) -> None:
        self._fleet = fleet
        self._digest = digest
        self._area = area
        self._lease = lease
        self.peer = peer
        self.shared = True

    def done(self, committed: int | None) -> None:
        self._fleet._done(self._area, self._digest, self._lease, committed)


class _Local:
    """Redis is gone (or not found yet): this node fetches upstream on its own."""

    peer = None
    shared = False

    def done(self, committed: int | None) -> None:
        pass


_LOCAL = _Local()


class Fleet:
    """
    This node's membership of the fleet.
    """

    def __init__(self, reactor: IReactorTime, config: FleetConfig, redis: Redis, peers: PeerClient,
                 on_claim: Callable[[str], None] = lambda outcome: None,
                 on_redis: Callable[[bool], None] = lambda up: None) -> None:
        self._reactor = reactor
        self.redis = redis
        self._peers = peers
        self._ttl = config.lock_ttl
        self.node = config.node
        self._lock = FillLock(redis, reactor, config.node, config.lock_ttl)
        self._nodes = NodeDirectory(redis, config.node, str(config.peer_url), ttl=3 * max(config.lock_ttl, HEARTBEAT))
        self._leases: dict[tuple[str, Digest], Lease] = {}
        self._on_claim = on_claim
        self._on_redis = on_redis
        self._up: bool | None = None
        """Whether Redis answers; C{None} until the first heartbeat says."""
        self._heartbeat = LoopingCall(lambda: Deferred.fromCoroutine(self._beat()))
        self._heartbeat.clock = reactor

    # -- life

    def start(self) -> None:
        self._heartbeat.start(HEARTBEAT, now=True).addErrback(
            lambda failure: log.failure("The fleet heartbeat broke", failure))

    async def stop(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()
        for lease in list(self._leases.values()):
            await lease.release()
        self._leases.clear()
        await self.redis.close()

    async def _beat(self) -> None:
        try:
            await self._nodes.announce()
        except RedisUnavailable as e:
            self._went_down(e)
        else:
            self._came_up()

    def _went_down(self, error: RedisUnavailable) -> None:
        if self._up is not False:
            log.warn("Fleet: {error}: falling back to local singleflight", error=str(error))
            self._up = False
            self._on_redis(False)

    def _came_up(self) -> None:
        if self._up is not True:
            log.info("Fleet: Redis at {where} answers: node {node} {what}", where=self.redis.where,
                     node=self.node, what="resumes fleet mode" if self._up is False else "is in the fleet")
            self._up = True
            self._on_redis(True)

    # -- the step

    @property
    def up(self) -> bool:
        """Whether Redis answers (as the last heartbeat or command found)."""
        return self._up is True

    def filling(self, digest: Digest, area: str = BLOBS) -> bool:
        """Whether this node holds the fill lock of C{digest} (of C{area})."""
        return (area, digest) in self._leases

    def area(self, name: str) -> FleetArea:
        """The fleet step for another kind of entry (C{git}): its own locks and holders."""
        return FleetArea(self, name)

    async def claim(self, digest: Digest, area: str = BLOBS) -> FleetClaim:
        if not self._up:
            self._on_claim("alone")
            return _LOCAL
        try:
            claim = await self._claim(digest, area)
        except RedisUnavailable as e:
            self._went_down(e)
            self._on_claim("alone")
            return _LOCAL
        self._on_claim("peer" if claim.peer is not None else "lock")
        return claim

    async def _claim(self, digest: Digest, area: str) -> _Claim:
        give_up = self._reactor.seconds() + 2 * self._ttl
        while True:
            taken = await self._lock.take(digest, area)
            if isinstance(taken, Lease):
                self._leases[area, digest] = taken
                # Ours to fill: from a node that holds it whole, if any.
                try:
                    body = await self._from_holders(digest, area)
                except RedisUnavailable as e:
                    # Held, so nobody else fetches it: the upstream it is.
                    self._went_down(e)
                    body = None
                return _Claim(self, digest, taken, body, area)
            if taken.node != self.node:  # our own is a previous run's: it expires
                body = await self._ask(taken.node, digest, area)
                if body is not None:
                    return _Claim(self, digest, None, body, area)
            if self._reactor.seconds() > give_up:
                log.warn("Fleet: node {holder} holds the fill lock of {digest} but does not serve it;"
                         " fetching it upstream", holder=taken.node, digest=entry_name(area, digest))
                return _Claim(self, digest, None, None, area)
            await deferLater(self._reactor, POLL, lambda: None)

    async def _from_holders(self, digest: Digest, area: str) -> IResponse | None:
        for node in await self._nodes.holders(digest, area):
            body = await self._ask(node, digest, area)
            if body is not None:
                return body
        return None

    async def _ask(self, node: str, digest: Digest, area: str) -> IResponse | None:
        url = await self._nodes.peer_url(node)
        if url is None:
            return None  # not announced: gone
        answer = await self._peers.blob(url, digest, area)
        return answer if not isinstance(answer, int) else None

    async def size(self, digest: Digest) -> int | None:
        """The size a node of the fleet verified C{digest} has, if one did."""
        if not self._up:
            return None
        try:
            return await self._nodes.size(digest)
        except RedisUnavailable as e:
            self._went_down(e)
            return None

    def _done(self, area: str, digest: Digest, lease: Lease | None, committed: int | None) -> None:
        if lease is not None and self._leases.get((area, digest)) is lease:
            del self._leases[area, digest]
        Deferred.fromCoroutine(self._settle(area, digest, lease, committed)).addErrback(_log_failure)

    async def _settle(self, area: str, digest: Digest, lease: Lease | None, committed: int | None) -> None:
        try:
            if committed is not None:
                await self._nodes.holding(digest, committed, area)
        except RedisUnavailable as e:
            self._went_down(e)
        if lease is not None:
            await lease.release()


class FleetArea:
    """
    The fleet step of another kind of entry (its L{Fleet.area}): one
    upstream fetch per entry across the nodes, streamed from the filling
    node's internal endpoint (C{GET /<area>/<digest>}).
    """

    def __init__(self, fleet: Fleet, area: str) -> None:
        self._fleet = fleet
        self._area = area

    async def claim(self, digest: Digest) -> FleetClaim:
        return await self._fleet.claim(digest, self._area)


def _log_failure(failure: Failure) -> None:
    log.failure("Fleet bookkeeping failed", failure)
