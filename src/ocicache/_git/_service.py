"""
The git side of the daemon, wired once: the upstreams' clients, the ref
and pack services, the books of kept responses, and the upkeep that
writes their reads and expires them; with the S3 backend, the bucket's
C{git/} area too (its index, its janitor, the copy of each response).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from .._fetch._claim import ClaimStep
from .._fetch._replicate import Replicator
from .._fetch._slots import Slots
from .._ops._config._proxy import UNPROXIED, ProxyConfig
from .._ops._metrics import Metrics
from .._storage._bucket import Bucket
from .._storage._bucket_janitor import BucketJanitor
from .._storage._budget import Budget
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._store import Kind
from ._books import TABLE, GitBooks, remove_entries
from ._config import GitConfig
from ._mirror import Mirrors
from ._packs import PackService
from ._refs import AccessProofs, RefService
from ._upstream import GitUpstream

__all__ = ["GitParts"]

log = Logger()

BUCKET_AREA = "git"
"""The key prefix of git responses in the S3 store: C{<prefix>git/sha256/<hex>}."""

BUCKET_TABLE = "bucket_git_entries"


class GitParts:
    """Everything C{/git/} needs, for one configuration."""

    def __init__(self, config: GitConfig, reactor: Any, disk: Disk, pool: HTTPConnectionPool, slots: Slots,
                 health: DiskHealth, metrics: Metrics, budget: Budget,
                 interval: float, proxies: ProxyConfig = UNPROXIED,
                 proxied_pool: HTTPConnectionPool | None = None, bucket: Bucket | None = None,
                 replicator: Replicator | None = None, abandon_uploads_after: float = 86400.0,
                 fleet: ClaimStep | None = None) -> None:
        """
        @param budget: the disk's budget, which git responses and mirrors
            share with every other kind the store keeps.
        @param bucket: the S3 store (its blobs' area), with the S3 backend;
            git responses get an area of their own in it, in the bucket's
            budget, filled through C{replicator}.
        @param fleet: the fleet's step for git responses, in a fleet.
        """
        self.config = config
        self.upstreams = {
            upstream.name: GitUpstream(upstream, reactor, pool, partial(_count, metrics, upstream.name),
                                       proxies.routes_for(upstream.proxy), proxied_pool)
            for upstream in config.upstreams
        }
        self.capacity = Capacity(budget, disk, table=TABLE, kind=Kind.GIT,
                                 remove=partial(remove_entries, disk))
        ttl = max((upstream.pack_ttl for upstream in config.upstreams), default=86400.0)
        self.books = GitBooks(disk, self.capacity, ttl)
        self.refs = RefService(reactor, AccessProofs(reactor))
        self.bucket: Bucket | None = None
        self._bucket_janitor: BucketJanitor | None = None
        git_replicator: Replicator | None = None
        if bucket is not None and replicator is not None:
            self.bucket = bucket.sibling(BUCKET_AREA, BUCKET_TABLE)
            git_replicator = replicator.into(self.bucket)
            self._bucket_janitor = BucketJanitor(self.bucket, disk.metadata, ttl, abandon_uploads_after,
                                                 lambda: set(replicator.live))
        mirrors = None
        if any(upstream.mode == "mirror" for upstream in config.upstreams):
            mirrors = Mirrors(disk, self.books, on_fetch=partial(_count_fetch, metrics))
        self.packs = PackService(disk, self.books, self.refs, slots, health,
                                 lambda upstream, count: metrics.git_upstream_bytes.labels(upstream).inc(count),
                                 mirrors, self.bucket, git_replicator, fleet)
        metrics.git_size.set_function(lambda: self.capacity.size)
        metrics.git_entries.set_function(lambda: len(self.capacity.policy))
        self._recovered = False
        self.upkeep = TimerService(interval, lambda: Deferred.fromCoroutine(self._upkeep()))

    async def _upkeep(self) -> None:
        try:
            if not self._recovered:
                await self.books.recover()
                self._recovered = True
            expired = await self.books.upkeep()
        except Exception:
            log.failure("The git responses' upkeep failed")
            return
        if expired:
            log.info("Removed {count} git responses nobody read for their pack_ttl", count=expired)
        await self._bucket_upkeep()

    async def _bucket_upkeep(self) -> None:
        """The bucket's git area: its index, expiry, eviction and abandoned uploads, as for blobs."""
        janitor = self._bucket_janitor
        if janitor is None or self.bucket is None or not self.bucket.usable:
            return
        try:
            if not janitor.recovered:
                await janitor.recover()
            report = await janitor.run()
        except Exception as e:
            log.warn("The S3 store's git responses could not be tidied: {error}", error=str(e))
            return
        if report.expired or report.evicted:
            log.info("Removed {count} git responses from the S3 store", count=report.expired + report.evicted)


def _count(metrics: Metrics, upstream: str, kind: str, code: str) -> None:
    metrics.git_upstream_requests.labels(upstream, kind, code).inc()


def _count_fetch(metrics: Metrics, upstream: str, outcome: str) -> None:
    metrics.git_upstream_requests.labels(upstream, "mirror-fetch", outcome).inc()
