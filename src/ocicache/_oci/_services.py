"""
L{Services}: everything the resources need, wired once by the daemon.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread

from .._identity._authenticator import Authenticator, build_authenticator
from .._ops._config import Config
from .._ops._metrics import Metrics
from .._policy import Policy
from .._storage._pull_log import Pull
from .._upstream._client import Upstream
from .._web._streamer import WriteBudget
from ._blobs import BlobService
from ._manifests import ManifestService
from ._referrers import ReferrerService
from ._tags import TagService

__all__ = ["Services"]


class Services:
    """
    Everything the resources need, wired once by the service.  It is
    also the one holder of what a reload swaps (C{policy} and
    C{authenticator}): the resources read them from here on every
    request, never keep a copy.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: Config,
        upstreams: dict[str, Upstream],
        blobs: BlobService,
        manifests: ManifestService,
        metrics: Metrics,
        tags: TagService | None = None,
        referrers: ReferrerService | None = None,
        authenticator: Authenticator | None = None,
        on_pull: Callable[[Pull], None] = lambda pull: None,
    ) -> None:
        self.reactor = reactor
        self.on_pull = on_pull
        """Told of every manifest GET answered (the pull log)."""
        self.config = config
        self.upstreams = upstreams
        self.blobs = blobs
        self.manifests = manifests
        self.tags = tags if tags is not None else TagService(
            reactor, lambda upstream: config.tag_ttl_for(upstream.config))
        self.referrers = referrers if referrers is not None else ReferrerService(
            reactor, manifests, config.cache.referrers_ttl)
        self.metrics = metrics
        # Told (digest, size) after a manifest miss, which stored it: keeps
        # the cache-size metrics current without a scan.
        self.write_budget = WriteBudget()
        self.policy = Policy.from_config(config)
        self.authenticator = authenticator if authenticator is not None else build_authenticator(
            config.auth, reactor, deferToThread, metrics=metrics)
        """
        Read afresh for each request, never kept elsewhere: a reload
        replaces it with one built from the new configuration.
        """
