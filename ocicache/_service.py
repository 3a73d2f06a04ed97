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

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from ._access import RepoAccess
from ._blobs import BlobService
from ._challenge import TokenCache
from ._config import Config
from ._health import OperatorResource
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
        self.blobs = BlobService(reactor, self.store, self.metadata, self.disk_pool, access)
        self.manifests = ManifestService(
            reactor, self.store, self.metadata, self.disk_pool, access,
            lambda upstream: config.tag_ttl_for(upstream.config),
        )
        services = Services(reactor, config, self.upstreams, self.blobs, self.manifests, self.metrics)
        self.site = Site(RootResource(services))
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

    def startService(self) -> None:
        removed = self.store.prepare()
        if removed:
            log.info("Removed {count} temp files left by an earlier run", count=removed)
        self.disk_pool.start()
        self.metadata.open()
        super().startService()
        log.info("ocicache caching in {dir}; upstreams: {upstreams}",
                 dir=self.store.root, upstreams=", ".join(self.upstreams))

    def stopService(self) -> Deferred[Any]:
        stopping = super().stopService()

        def close(result: object) -> Deferred[Any]:
            self.disk_pool.stop()
            return DeferredList([self.metadata.close(), self.http_pool.closeCachedConnections()])

        return stopping.addBoth(close)  # type: ignore[no-any-return]

