"""
The git side of the daemon, wired once: the upstreams' clients, the ref
and pack services, the books of kept responses, and the upkeep that
writes their reads and expires them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from .._fetch._slots import Slots
from .._ops._config._proxy import UNPROXIED, ProxyConfig
from .._ops._metrics import Metrics
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


class GitParts:
    """Everything C{/git/} needs, for one configuration."""

    def __init__(self, config: GitConfig, reactor: Any, disk: Disk, pool: HTTPConnectionPool, slots: Slots,
                 health: DiskHealth, metrics: Metrics, max_size: int | None, min_free: int | float | None,
                 interval: float, proxies: ProxyConfig = UNPROXIED,
                 proxied_pool: HTTPConnectionPool | None = None
                 ) -> None:
        self.config = config
        self.upstreams = {
            upstream.name: GitUpstream(upstream, reactor, pool, partial(_count, metrics, upstream.name),
                                       proxies.routes_for(upstream.proxy), proxied_pool)
            for upstream in config.upstreams
        }
        self.capacity = Capacity(disk, max_size, min_free, table=TABLE, kind=Kind.GIT,
                                 remove=partial(remove_entries, disk))
        ttl = max((upstream.pack_ttl for upstream in config.upstreams), default=86400.0)
        self.books = GitBooks(disk, self.capacity, ttl)
        self.refs = RefService(reactor, AccessProofs(reactor))
        mirrors = None
        if any(upstream.mode == "mirror" for upstream in config.upstreams):
            mirrors = Mirrors(disk, self.books, on_fetch=partial(_count_fetch, metrics))
        self.packs = PackService(disk, self.books, self.refs, slots, health,
                                 lambda upstream, count: metrics.git_upstream_bytes.labels(upstream).inc(count),
                                 mirrors)
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


def _count(metrics: Metrics, upstream: str, kind: str, code: str) -> None:
    metrics.git_upstream_requests.labels(upstream, kind, code).inc()


def _count_fetch(metrics: Metrics, upstream: str, outcome: str) -> None:
    metrics.git_upstream_requests.labels(upstream, "mirror-fetch", outcome).inc()
