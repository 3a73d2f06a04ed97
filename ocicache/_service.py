"""
The daemon's service tree: the parts of ocicache wired together.

    OcicacheService (MultiService)
      ├─ one StreamServerEndpointService per registry listen address
      ├─ a StreamServerEndpointService for the operator listener (metrics)
      └─ the janitor (a TimerService)

The store and the metadata database are opened before the listeners
start, and closed after they stop.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from ._access import RepoAccess
from ._blobs import BlobService
from ._capacity import Capacity
from ._challenge import TokenCache
from ._config import Config
from ._health import OperatorResource
from ._janitor import Janitor
from ._manifests import ManifestService
from ._metadata import Metadata
from ._metrics import Metrics
from ._resources import RootResource, Services
from ._store import Store
from ._upstream import Upstream, make_pool

__all__ = ["OcicacheService", "ListenError"]

log = Logger()


class ListenError(ValueError):
    """A listen address is not a valid endpoint string."""


class _Site(Site):
    """
    A Site without twisted.web's own access line: each request already
    emits one structured C{ocicache.access} event.
    """

    def log(self, request: object) -> None:
        pass


class OcicacheService(MultiService):
    """
    The whole daemon, as one service twistd starts and stops.
    """

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.metrics = Metrics()
        self.store = Store(config.cache.dir)
        self.metadata = Metadata(f"{self.store.root}/metadata.sqlite", reactor)
        self.disk_pool = ThreadPool(minthreads=0, maxthreads=8, name="ocicache-disk")
        self.http_pool = make_pool(reactor)
        tokens = TokenCache(reactor)
        self.upstreams = {
            upstream.name: Upstream(upstream, reactor, self.http_pool, tokens)
            for upstream in config.upstreams
        }
        access = RepoAccess(self.metadata)
        self.capacity = Capacity(
            reactor, self.store, self.metadata, self.disk_pool,
            config.cache.max_size, config.cache.min_free, self._evicted,
        )
        self.blobs = BlobService(
            reactor, self.store, self.metadata, self.disk_pool, access, self.capacity,
            lambda upstream, count: self.metrics.upstream_bytes.labels(upstream).inc(count),
        )
        self.janitor = Janitor(
            reactor, self.store, self.metadata, self.capacity, self.disk_pool,
            config.cache.blob_ttl,
            lambda: [download.temp_path for download in self.blobs.inflight.values()],
        )
        self._janitor_timer = TimerService(
            config.cache.janitor_interval, lambda: Deferred.fromCoroutine(self._janitor_pass())
        )
        self._janitor_timer.setServiceParent(self)
        self.manifests = ManifestService(
            reactor, self.store, self.metadata, self.disk_pool, access,
            lambda upstream: config.tag_ttl_for(upstream.config),
        )
        services = Services(reactor, config, self.upstreams, self.blobs, self.manifests, self.metrics)
        self.site = _Site(RootResource(services))
        self.site.displayTracebacks = False
        for description in config.server.listen:
            self._listen(description, self.site)
        if config.metrics.listen is not None:
            operator = OperatorResource(
                self.metrics, self.store.root, lambda: self.metadata.is_open
            )
            self._listen(config.metrics.listen, Site(operator))

    def _listen(self, description: str, site: Site) -> None:
        try:
            endpoint = serverFromString(self._reactor, description)
        except Exception as e:
            raise ListenError(f"{description!r} is not a valid listen endpoint: {e}") from None
        service = StreamServerEndpointService(endpoint, site)
        # Fail start-up, don't just log, when the port cannot be bound.
        service._raiseSynchronously = True
        service.setServiceParent(self)

    def _evicted(self, count: int, size: int) -> None:
        self.metrics.evictions.inc(count)
        self.metrics.evicted_bytes.inc(size)

    async def _janitor_pass(self) -> None:
        """
        One janitor pass; the first one recovers the store.  A failing pass
        is logged and the next one tries again.
        """
        try:
            if not self.janitor.recovered:
                await self.janitor.recover()
            report = await self.janitor.run()
        except Exception:
            log.failure("Janitor pass failed")
            return
        if report.expired or report.evicted or report.temp_removed or report.tags_removed:
            log.info(
                "Janitor: expired {expired} blobs ({expired_bytes} B), evicted {evicted} ({evicted_bytes} B),"
                " removed {temp} abandoned temp files and {tags} old tag rows",
                expired=report.expired, expired_bytes=report.expired_bytes, evicted=report.evicted,
                evicted_bytes=report.evicted_bytes, temp=report.temp_removed, tags=report.tags_removed,
            )

    def startService(self) -> None:
        # Before anything listens: a crash's leftovers go, so nothing
        # partial can ever be served.
        removed = self.store.prepare()
        if removed:
            log.info("Removed {count} temp files left by an earlier run", count=removed)
        self.disk_pool.start()
        self.metadata.open()
        # The TimerService's first pass runs now and does the recovery.
        super().startService()
        log.info("ocicache caching in {dir}; upstreams: {upstreams}",
                 dir=self.store.root, upstreams=", ".join(self.upstreams))

    def stopService(self) -> Deferred[Any]:
        stopping = super().stopService()

        def close(result: object) -> Deferred[Any]:
            self.disk_pool.stop()
            return DeferredList([self.metadata.close(), self.http_pool.closeCachedConnections()])

        return stopping.addBoth(close)  # type: ignore[no-any-return]

