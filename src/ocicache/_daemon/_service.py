"""
The daemon's service tree: the parts of ocicache wired together.

    OcicacheService (MultiService)
      ├─ one StreamServerEndpointService per registry listen address
      ├─ a StreamServerEndpointService for the operator listener (metrics, /pins)
      ├─ with [fleet], a StreamServerEndpointService for the internal peer endpoint
      ├─ the janitor (a TimerService; with the S3 backend, the bucket's too)
      ├─ a TimerService per [[warm]] entry with `every` (the others run once at start)
      └─ the pins' tag-following (a TimerService, on the janitor's interval)

The store and the metadata database are opened before the listeners
start, and closed after they stop.  A corrupt database is moved aside and
a new one created (said in one log line); one that cannot be opened or
created stops start-up with one line on stderr and a non-zero exit, before
anything listens.

Once started, C{SIGHUP} reloads the config file (L{ocicache._daemon._reload}).

Stopping is graceful (L{ocicache._web._site}): the registry listeners close
first, responses in progress get up to C{[server] drain_timeout} to
finish, the rest are cut; then downloads nobody waits for are abandoned,
the other services stop, the database is closed and no temp file is left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from treq.client import HTTPClient
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import IResource
from twisted.web.server import Request

from .._fetch._incoming import DownloadError
from .._fetch._negative import NegativeCache
from .._fetch._observe import observed
from .._fetch._replicate import Replicator
from .._fetch._slots import Slots
from .._fetch._source import Source
from .._files._resource import FilesResource
from .._files._service import BUCKET_AREA as FILES_AREA
from .._files._service import BUCKET_TABLE as FILES_TABLE
from .._files._service import FileService
from .._fleet._bucket_book import RedisBucketBook
from .._fleet._fleet import Fleet
from .._fleet._internal import InternalResource
from .._fleet._peer import PeerClient
from .._fleet._proofs import RedisProofs
from .._fleet._records import RedisRecords
from .._fleet._redis import Redis
from .._fleet._tags import RedisManifests
from .._git._resource import GitResource, takes_body
from .._git._service import GitParts
from .._identity._authenticator import Authenticator, build_authenticator
from .._identity._errors import Unauthenticated
from .._identity._oidc import fetch_with
from .._oci._access import RepoAccess
from .._oci._blobs import BlobService
from .._oci._manifests import ManifestService
from .._oci._pins import PinsResource
from .._oci._pipeline import origin
from .._oci._referrers import ReferrerService
from .._oci._resources import Services, registry_resources
from .._oci._store_manifests import StoreManifests
from .._oci._tags import TagService
from .._oci._warm import Warmer
from .._ops._config import Config
from .._ops._logging import log_as_worker
from .._ops._metrics import FileMetrics, ManifestTally, Metrics
from .._ops._reactor import Reactor
from .._spec._reference import Digest
from .._storage._bucket import Bucket
from .._storage._bucket_janitor import BucketJanitor
from .._storage._budget import Budget
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._janitor import Janitor
from .._storage._metadata import Metadata, MetadataUnavailable
from .._storage._pause_files import PauseFiles
from .._storage._pull_log import PullLog
from .._storage._purge import Purger
from .._storage._scrub import Scrubber
from .._storage._slot_files import SlotFiles
from .._storage._store import Kind, Store
from .._upstream._client import Upstream, make_pool
from .._upstream._tokens import TokenCache
from .._web._admin import Admin, AdminResource
from .._web._errors import challenged
from .._web._operator import OperatorResource
from .._web._root import RootResource
from .._web._site import DrainingSite, QuietSite
from .._web._status_page import RecentProblems, StatusPage, StatusSources
from ._application_log import give_log_observer
from ._bucket_client import s3_client
from ._handover import AdoptedListener
from ._housekeeping import Housekeeping
from ._listening import ListenError, listener, plain_and_reachable
from ._memory_return import MemoryReturn, limit_malloc_arenas, malloc_trim, reuse_large_buffers
from ._preflight import warn_at_start
from ._reload import Reloader
from ._siblings import ask_siblings, serve_siblings
from ._stopping import hold_stop_signals
from ._warming import Warming
from ._worker_role import WorkerRole

__all__ = ["OcicacheService", "ListenError"]

log = Logger()


class OcicacheService(MultiService):
    """
    The whole daemon, as one service twistd starts and stops.
    """

    log_observer: ILogObserver | None = None
    """
    Set by C{makeService} for C{[server] log_format = "json"}: given to the
    twistd application as its log observer (see L{setServiceParent}).
    """

    def __init__(self, config: Config, reactor: Reactor, role: WorkerRole | None = None) -> None:
        MultiService.__init__(self)
        self.config = config
        self._reactor = reactor
        self.role = role
        """With C{[server] workers} > 1: which worker this process is (L{ocicache._daemon._worker_role})."""
        if role is not None:
            log_as_worker(role.index)
        self.metrics = Metrics()
        self.store = Store(config.cache.dir)
        self.metadata = Metadata(f"{self.store.root}/metadata.sqlite", reactor)
        # The disk threads share one malloc arena (_memory_return), set before any starts.
        limit_malloc_arenas(2)
        # Blob buffers (about 1 MiB) reused, not mapped and zeroed anew each.
        reuse_large_buffers()
        self.disk_pool = ThreadPool(minthreads=0, maxthreads=8, name="ocicache-disk")
        self.http_pool = make_pool(reactor)
        # The connections of git and file remotes through the outbound proxy.
        self.proxy_pool = make_pool(reactor)
        tokens = TokenCache(reactor)
        pauses = PauseFiles(self.store.root)
        self.upstreams = {
            upstream.name: Upstream(upstream, reactor, self.http_pool, tokens, metrics=self.metrics,
                                    routes=config.proxy.routes_for(upstream.proxy), pauses=pauses)
            for upstream in config.upstreams
        }
        # One view of the disk's health, one bound on upstream fetches, for
        # blobs and manifests alike.
        health = DiskHealth()
        per_upstream = {upstream.name: upstream.max_downloads for upstream in config.upstreams}
        slots = Slots(config.cache.max_downloads, config.cache.download_queue,
                      lambda name: per_upstream.get(name, 1),
                      host=(SlotFiles(self.store.root), reactor))
        access = RepoAccess(self.metadata, reactor, health=health)
        # Upstream 404s, remembered for blobs, manifests and tag lists alike.
        negative = NegativeCache(reactor, config.cache.negative_ttl, config.cache.negative_digest_ttl,
                                 shared=self.metadata)
        self.fleet = self._join_fleet(config)
        access = RepoAccess(self.metadata, reactor, health=health, shared=self._shared_proofs())
        self.disk = disk = Disk(reactor, self.store, self.metadata, self.disk_pool)
        # With the S3 backend, [cache] max_size is the bucket's, and the
        # disk holds a tier of hot blobs of its own size.
        s3 = config.storage.s3
        local_max_size = config.cache.max_size if s3 is None else s3.local_max_size
        # One budget for every kind the disk keeps: blobs, git, files.
        self.budget = Budget(self.store.root, local_max_size, config.cache.min_free, shared=disk)
        self.capacity = Capacity(self.budget, disk, self._evicted, protected=self._protected)
        self.bucket: Bucket | None = None
        self.replicator: Replicator | None = None
        self.bucket_janitor: BucketJanitor | None = None
        self.files_bucket: Bucket | None = None
        """The S3 store's area of files (L{ocicache._files}), with C{[[files]]} on the S3 backend."""
        bucket_janitors: list[BucketJanitor] = []
        self.s3_pool: HTTPConnectionPool | None = None
        if s3 is not None:
            self.s3_pool = make_pool(reactor)
            self.bucket = Bucket(
                s3_client(s3, reactor, self.s3_pool, disk), s3.prefix, disk, config.cache.max_size, s3.redirect,
                self._evicted, on_bytes=lambda direction, count: self.metrics.s3_bytes.labels(direction).inc(count),
                on_upload=lambda outcome: self.metrics.s3_uploads.labels(outcome).inc(),
                protected=self._protected, book=self._bucket_book(),
            )
            self.replicator = Replicator(self.bucket, disk, s3.upload_part_size, s3.max_part_uploads)
            replicator = self.replicator
            self.bucket_janitor = BucketJanitor(self.bucket, self.metadata, config.cache.blob_ttl,
                                                s3.abandon_uploads_after, lambda: set(replicator.live))
            bucket_janitors.append(self.bucket_janitor)
            if config.files is not None and config.files.remotes:
                # Files are kept until evicted, in the bucket as on disk.
                self.files_bucket = self.bucket.sibling(FILES_AREA, FILES_TABLE)
                bucket_janitors.append(BucketJanitor(self.files_bucket, self.metadata, None,
                                                     s3.abandon_uploads_after, lambda: set(replicator.live)))
        self.blobs = BlobService(
            disk, access, self.capacity,
            lambda upstream, count: self.metrics.upstream_bytes.labels(upstream).inc(count),
            slots=slots, health=health, abandon_after=config.cache.abandon_after,
            keep_fraction=config.cache.abandon_below,
            on_corrupt=lambda digest: self.metrics.corrupt_blobs.labels("read").inc(),
            negative=negative,
            bucket=self.bucket, replicator=self.replicator,
            fleet=self.fleet,
        )
        self.scrubber = Scrubber(
            disk, self.capacity, config.cache.scrub_rate, on_scrubbed=self.metrics.scrubbed_bytes.inc,
            on_corrupt=lambda digest: self.metrics.corrupt_blobs.labels("scrub").inc(),
        )
        self.manifest_tally = ManifestTally()
        self.git: GitParts | None = None
        self.files: FileService | None = None
        """C{/git/}'s parts, when C{[[git]]} tables are configured."""
        self.janitor = Janitor(
            disk, self.capacity, config.cache.blob_ttl,
            lambda: [download.temp_path for download in
                     [*self.blobs.inflight.values(), *(self.git.packs.inflight.values() if self.git else ()),
                      *(self.files.inflight.values() if self.files else ())]],
            manifest_ttl=config.cache.manifest_ttl, manifest_accesses=lambda: self.manifests.take_reads(),
            on_manifests_removed=self._manifests_removed,
        )
        self.housekeeping = Housekeeping(config.cache.janitor_interval, self.janitor, bucket_janitors,
                                         self.upstreams, self.metadata)
        MultiService.addService(self, self.housekeeping)
        self.manifests = ManifestService(
            disk, access, self._tag_ttl, slots=slots, health=health, negative=negative,
            shared=self._shared_manifests(), on_stored=self.manifest_tally.added,
        )
        self.warming = Warming(
            Warmer(disk, self.manifests, self.blobs, self.upstreams, lambda: self.config.cache.max_size,
                   on_blob=lambda outcome: self.metrics.warm_blobs.labels(outcome).inc()),
            config.warm, config.cache.janitor_interval, self.metadata, self.metrics, reactor)
        if role is None or role.housekeeper:
            # Warming and the pins' tag-following: once for the host.
            MultiService.addService(self, self.warming)
        referrers = ReferrerService(reactor, self.manifests, config.cache.referrers_ttl, disk=disk)
        # What the registry resources read on each request (not
        # MultiService's "services", the children), and what a reload swaps
        # parts of: the policy, the upstream credentials, and the
        # authenticator (authenticator_for the new config).
        self.problems = RecentProblems()
        self.pull_log = PullLog(os.path.join(self.store.root, "pulls"), config.admin.pull_log_days, reactor,
                                disk.run)
        self.registry = services = Services(
            reactor, config, self.upstreams, self.blobs, self.manifests, self.metrics,
            referrers=referrers,
            tags=TagService(reactor, self._tag_ttl, negative=negative),
            authenticator=self.authenticator_for(config), on_pull=self.pull_log.record)
        children = registry_resources(services)
        if config.git is not None and config.git.upstreams:
            # Git repositories (docs/git.md): /git/, and its upload-pack bodies.
            self.git = GitParts(config.git, reactor, disk, self.http_pool, slots, health, self.metrics,
                                self.budget, config.cache.janitor_interval,
                                config.proxy, self.proxy_pool,
                                self.bucket, self.replicator,
                                s3.abandon_uploads_after if s3 is not None else 86400.0,
                                None if self.fleet is None else self.fleet.area("git"))
            if role is None or role.housekeeper:
                # The responses' expiry and the bucket's git area: once for the host.
                self.git.upkeep.setServiceParent(self)
            children[b"git"] = GitResource(config.git, self.git.upstreams, self.git.refs, self.git.packs, disk,
                                           self.metrics, config.server.sendfile, config.server.stall_timeout,
                                           services.write_budget)
        self.files = self._wire_files(config, children, health)
        self.site = DrainingSite(RootResource(children), reactor, self.metrics, config.server)
        if self.git is not None:
            self.site.takes_body = takes_body
        self.site.displayTracebacks = False
        # After a storm of connections, their memory goes back to the system.
        self.memory_return = MemoryReturn(reactor, disk.run, trim=malloc_trim())
        self.site.on_channel_closed = self.memory_return.connection_closed
        self._registry_listeners = [self._listen(description, self.site) for description in config.server.listen]
        self._sibling_port: Deferred[IListeningPort] | None = None
        self.metrics.inflight_downloads.set_function(lambda: len(self.blobs.inflight))
        if config.fleet is not None and self.fleet is not None:
            internal = QuietSite(InternalResource(self.blobs, self.store, config.fleet.secret, reactor,
                                                  self.fleet.filling,
                                                  self._peer_sources()))
            internal.displayTracebacks = False
            self._listen(config.fleet.internal_listen, internal)
        if config.metrics.listen is not None:
            operator = OperatorResource(
                self.metrics, self.store.root, lambda: self.metadata.is_open,
                before_scrape=self._refresh_cache_gauges, draining=lambda: self.site.draining,
                problems=self._store_problems,
                siblings=None if role is None else lambda: ask_siblings(reactor, role),
            )
            if role is not None:
                self._sibling_port = serve_siblings(reactor, role, operator.own_exposition)
            operator.putChild(b"pins", PinsResource(self.warming.warmer, on_changed=self.warming.pins_changed))
            operator.putChild(b"admin", AdminResource(Admin(
                self.metadata, Purger(disk, self.capacity, self._manifests_removed), self.janitor, self.pull_log,
                self.upstreams, self._default_upstream_name, reactor,
                lambda: self.config.admin.token)))
            operator.putChild(b"", StatusPage(StatusSources(
                self.metrics, self.metadata, self.upstreams, lambda: self.blobs.inflight, self.problems, reactor)))
            operator_site = QuietSite(operator)
            operator_site.displayTracebacks = False
            self._listen(config.metrics.listen, operator_site)

    def _wire_files(self, config: Config, children: dict[bytes, IResource], health: DiskHealth) -> FileService | None:
        """C{[[files]]}: the file remotes' service, mounted at C{/files/} (L{ocicache._files})."""
        if config.files is None or not config.files.remotes:
            return None
        if config.files.max_size is not None:
            log.warn("[files_cache] max_size is deprecated and ignored: [cache] max_size bounds the files"
                     " with everything else the store keeps")
        files = FileService(config.files, self.disk, self.http_pool, self.budget, health,
                            FileMetrics(self.metrics), config.cache.abandon_after, config.cache.abandon_below,
                            proxies=self.config.proxy, proxied_pool=self.proxy_pool,
                            bucket=self.files_bucket,
                            replicator=None if self.files_bucket is None or self.replicator is None
                            else self.replicator.into(self.files_bucket),
                            fleet=None if self.fleet is None else self.fleet.area(FILES_AREA),
                            shared=self._shared_records())

        async def authenticate(request: Request) -> None:
            authenticator = self.registry.authenticator
            try:
                await authenticator.authenticate(request.getHeader(b"authorization"))
            except Unauthenticated as e:
                raise challenged(e, authenticator.challenge(origin(request), None)) from None

        children[b"files"] = FilesResource(files, self._reactor, self.metrics, config.server, authenticate,
                                           self.registry.write_budget)
        return files

    def _default_upstream_name(self) -> str | None:
        default = self.config.default_upstream
        return default.name if default is not None else None

    def _join_fleet(self, config: Config) -> Fleet | None:
        """With C{[fleet]}: this node's part in the fleet (L{ocicache._fleet})."""
        fleet = config.fleet
        if fleet is None:
            return None
        redis = Redis(self._reactor, fleet.redis_host, fleet.redis_port, fleet.redis_db, fleet.redis_password)
        return Fleet(
            self._reactor, fleet, redis, PeerClient(self._reactor, self.http_pool, fleet.secret),
            on_claim=lambda outcome: self.metrics.fleet_claims.labels(outcome).inc(),
            on_redis=lambda up: self.metrics.fleet_redis_up.set(1 if up else 0),
        )

    def _peer_sources(self) -> dict[str, Callable[[Digest], Source | None]]:
        """What the internal endpoint serves the other nodes besides blobs: each area's entries."""
        sources: dict[str, Callable[[Digest], Source | None]] = {}
        if self.git is not None:
            sources["git"] = self.git.packs.peer_source
        if self.files is not None:
            sources[FILES_AREA] = self.files.peer_source
        return sources

    def _shared_records(self) -> RedisRecords | None:
        """In a fleet, the records of mutable files are shared through Redis."""
        fleet = self.fleet
        return None if fleet is None else RedisRecords(fleet.redis, lambda: fleet.up)

    def _bucket_book(self) -> RedisBucketBook | None:
        """In a fleet, the nodes on one bucket share its eviction bookkeeping through Redis."""
        fleet = self.fleet
        return None if fleet is None else RedisBucketBook(fleet.redis, self._reactor, fleet.node, lambda: fleet.up)

    def _shared_proofs(self) -> RedisProofs | None:
        """In a fleet, access proofs are shared through Redis."""
        fleet = self.fleet
        return None if fleet is None else RedisProofs(fleet.redis, lambda: fleet.up)

    def _shared_manifests(self) -> RedisManifests | StoreManifests:
        """In a fleet, tags and manifests are shared through Redis; else by the processes on the store."""
        fleet = self.fleet
        return StoreManifests(self.disk) if fleet is None else RedisManifests(fleet.redis, lambda: fleet.up, fleet.node)

    async def _protected(self) -> list[Digest]:
        """
        What eviction and expiry must leave: pinned closures, and the blobs
        of every manifest read within C{[cache] protect_recent} (an image
        being pulled keeps its layers until the pull is done).
        """
        window = self.config.cache.protect_recent
        since = self._reactor.seconds() - window if window > 0 else float("inf")
        recent = self.manifests.recent_reads(since)
        return [Digest.parse(text) for text in await self.metadata.protected_blobs(since, recent)]

    def authenticator_for(self, config: Config) -> Authenticator:
        """
        The authenticator for C{config}'s C{[auth]}: bcrypt in the
        reactor's threads, OIDC keys fetched through the upstream
        connection pool (an issuer's JWKS URL is verified HTTPS, or plain
        HTTP where configured so).  A reload builds a new one with this.
        """
        fetch = fetch_with(HTTPClient(Agent(self._reactor, pool=self.http_pool)))
        return build_authenticator(config.auth, self._reactor, deferToThread, fetch, self.metrics)

    def _listen(self, description: str, factory: IProtocolFactory) -> IService:
        """
        Serve C{factory} on C{description}: bound here, or, in a worker, the
        main process's listener adopted.
        """
        inherited = None if self.role is None else self.role.inherited.get(description)
        service: Service = (listener(self._reactor, description, factory) if inherited is None
                            else AdoptedListener(self._reactor, description, inherited, factory))
        service.setServiceParent(self)
        return service

    def setServiceParent(self, parent: Any) -> None:
        give_log_observer(parent, self.log_observer)
        MultiService.setServiceParent(self, parent)

    def _tag_ttl(self, upstream: Upstream) -> float:
        """
        How long C{upstream}'s tags (and tag lists) are trusted: its
        C{tag_ttl}, stretched while its pull quota runs low.
        """
        return upstream.tag_ttl(self.config.tag_ttl_for(upstream.config))

    def _refresh_cache_gauges(self) -> None:
        """
        Before each scrape: the cache's size and entries, from running
        totals (blobs: the eviction policy's, loaded by the janitor's
        recovery and kept by commits and evictions; manifests: the tally,
        loaded by a scan at start-up and kept by stores); the S3 store's
        likewise, from the bucket's policy.
        """
        blobs = len(self.capacity.policy)
        self.metrics.cache_entries.labels("blob").set(blobs)
        self.metrics.cache_entries.labels("manifest").set(len(self.manifest_tally))
        self.metrics.cache_size.set(self.capacity.size + self.manifest_tally.size)
        if self.files is not None:
            self.metrics.files_size.set(self.files.capacity.size)
            self.metrics.files_entries.set(len(self.files.capacity.policy))
        if self.bucket is not None:
            self.metrics.s3_store_size.set(self.bucket.capacity.size)
            self.metrics.s3_store_blobs.set(len(self.bucket.capacity.policy))

    def _store_problems(self) -> list[str]:
        """For C{/readyz}: the S3 store, when it cannot be reached."""
        problem = self.bucket.health.problem if self.bucket is not None else None
        return [f"{problem}; passing blobs through from the upstream"] if problem is not None else []

    def _manifests_removed(self, digests: list[str]) -> None:
        for digest in digests:
            self.manifest_tally.removed(digest)
        self.manifests.forget(digests)

    def _evicted(self, count: int, size: int) -> None:
        self.metrics.evictions.inc(count)
        self.metrics.evicted_bytes.inc(size)

    startup_errors_to_log = True
    """
    Whether a failed start-up is logged as well as said on stderr; set by
    C{makeService} to C{False} when the log is standard output anyway
    (C{twistd -n} without C{--logfile}), so it is said once.
    """

    open_before_binding = True
    """
    Whether the store and the database open in L{privilegedStartService},
    before twistd binds the listeners there.  C{makeService} sets it to
    C{False} when twistd will switch to another user afterwards (C{--uid},
    C{--gid}): then they open in L{startService}, as that user, so that
    what they create is that user's.
    """

    status_pipe: Callable[[], int | None] = staticmethod(lambda: None)
    """
    The daemonized twistd's status pipe, if any (set by C{makeService}):
    its parent exits only once something is written there.
    """

    config_path: str | None = None
    """The file C{SIGHUP} reloads (set by C{makeService}); C{None}: the embedded default."""

    adjust_config: Callable[[Config], Config] = staticmethod(lambda config: config)
    """What the command line changes in a config (C{--listen}), applied to a reloaded one too."""

    reloader: Reloader | None = None
    quiet_second_stop = False
    """Whether a second SIGTERM or SIGINT while stopping is only logged (under twistd: L{makeService})."""

    _disk_opened = False

    def privilegedStartService(self) -> None:
        # twistd binds the listeners here, before startService: open the
        # disk first, so that a cache that cannot be used binds nothing.
        if self.open_before_binding:
            self._open_disk()
        MultiService.privilegedStartService(self)

    def _open_disk(self) -> None:
        """
        Before anything listens: a crash's leftovers go, so nothing partial
        can ever be served; and the database opens (blocking, here: the
        reactor does not run yet), rebuilt if corrupt, or start-up stops.
        """
        try:
            # A crash's temp files: those no other process holds (a
            # restarted worker's siblings hold theirs).
            removed = self.store.prepare()
            rebuilt = self.metadata.open_now(rebuild=True)
            self.budget.open()
        except OSError as e:
            where = f" ({e.filename})" if e.filename and e.filename != self.store.root else ""
            self._refuse_to_start(f"cannot use the cache directory {self.store.root}: {e.strerror}{where}")
        except MetadataUnavailable as e:
            self._refuse_to_start(str(e))
        self._disk_opened = True
        if removed:
            log.info("Removed {count} temp files left by an earlier run", count=removed)
        if rebuilt is not None:
            log.warn("The metadata database {path} was corrupt ({reason}): moved it to {moved_to} and created"
                     " a new one; stored blobs are adopted again, tags are resolved upstream on their next pull",
                     path=self.metadata.path, reason=rebuilt.reason, moved_to=rebuilt.moved_to)

    def startService(self) -> None:
        if not self._disk_opened:
            self._open_disk()
        self.disk_pool.start()
        # The TimerService's first pass runs now and does the recovery.
        MultiService.startService(self)
        if self.role is None or self.role.housekeeper:
            # The scrub's rate is the host's.
            self.scrubber.start()
        self.pull_log.start()
        self.problems.start()
        if self.fleet is not None:
            self.fleet.start()
        self.reloader = Reloader(self.config_path, self.config, self.registry, self.upstreams, self._reactor,
                                 self.disk_pool, self.adjust_config, self.metrics, self.authenticator_for)
        self.reloader.install()
        log.info("ocicache caching in {dir}; upstreams: {upstreams}",
                 dir=self.store.root, upstreams=", ".join(self.upstreams))
        if self.config.auth is not None:
            log.info("Client authentication: {accepts}", accepts=self.registry.authenticator.describe())
            for description in self.config.server.listen:
                if plain_and_reachable(description):
                    log.warn("Client credentials travel in clear text on {listen}: serve HTTPS (ssl:) or"
                             " put TLS in front", listen=description)
        warn_at_start(self.config)
        if self.bucket is not None:
            log.info("Blobs are stored in the S3 bucket {bucket}", bucket=self.bucket.name)
        for upstream in self.config.upstreams:
            if not upstream.tls_verify:
                log.warn("Upstream {upstream}: TLS certificate verification is OFF (tls_verify = false);"
                         " anyone on the path can impersonate it", upstream=upstream.name)
        restoring = Deferred.fromCoroutine(self.housekeeping.restore_quota())
        restoring.addErrback(lambda failure: log.failure("Could not read the last rate-limit state", failure))
        if self.files is not None:
            loading = Deferred.fromCoroutine(self.files.load())
            loading.addErrback(lambda failure: log.failure("Could not load the stored files", failure))
        scanning = self.disk.run(_scan_manifests, self.store)
        scanning.addCallback(self.manifest_tally.loaded)
        scanning.addErrback(lambda failure: log.failure("Could not count stored manifests", failure))
        if self.role is not None:
            # Serving, and SIGHUP is a reload: the supervisor may pass it on.
            self.role.say_ready()

    def _refuse_to_start(self, message: str) -> NoReturn:
        """
        Say why in one line and exit non-zero; nothing was started.  twistd
        has already sent C{sys.stderr} to the log, so the line goes to the
        process's own standard error; a daemonized twistd's parent waits on
        its status pipe instead, and prints what it reads there.
        """
        if self.startup_errors_to_log:
            log.critical("ocicache cannot start: {message}", message=message)
        pipe = self.status_pipe()
        if pipe is not None:
            # twistd's protocol: "0" for started, else "1 <reason>", of
            # which the parent reads 100 bytes: keep the end, the reason.
            said = message.encode("utf-8", "replace")
            os.write(pipe, b"1 " + (said if len(said) <= 98 else b"..." + said[-95:]))
            os.close(pipe)
        else:
            stderr = sys.__stderr__
            if stderr is not None:
                stderr.write(f"ocicache: {message}\n")
                stderr.flush()
        raise SystemExit(2)

    def stopService(self) -> Deferred[None]:
        """
        Stop gracefully; twistd waits for the returned Deferred before the
        reactor stops.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        Service.stopService(self)
        if self.quiet_second_stop:
            hold_stop_signals(self._reactor)
        if self.reloader is not None:
            self.reloader.uninstall()
        self.memory_return.stop()
        # 1. No new connections: the registry listeners close first.
        await DeferredList([maybeDeferred(listener.stopService) for listener in self._registry_listeners])
        # 2. Responses in progress finish, up to drain_timeout; then cut.
        await self.site.drain(self.config.server.drain_timeout)
        # 3. Downloads still receiving would only leave temp files now.
        #    (One whose bytes are all in is verifying or committing: it
        #    is left to finish in the disk thread.)
        settling = []
        for download in list(self.blobs.inflight.values()):
            if not download.ended and (download.size is None or download.available < download.size):
                download.fail(Failure(DownloadError("ocicache is stopping")))
            elif not download.settled.called:
                settling.append(observed(download.settled))
        if settling:
            # Verified bytes: let the commit and its metadata row land
            # before the disk thread and the database go.
            await DeferredList(settling)
        if self.replicator is not None:
            # Their uploads complete or abort while S3 is still reachable.
            await DeferredList(self.replicator.settling())
        # 4. Everything else: the operator listener, the janitor.
        children: list[IService] = list(self)
        await DeferredList([maybeDeferred(child.stopService) for child in reversed(children) if child.running])
        if self._sibling_port is not None:
            port = await self._sibling_port
            await maybeDeferred(port.stopListening)
        # 5. The disk thread (joined: commits in progress complete), the
        #    database, idle upstream connections; then no temp file stays.
        if self.fleet is not None:
            await self.fleet.stop()
        scrubbing = self.scrubber.stop()
        if scrubbing is not None:
            await scrubbing
        await self.housekeeping.flush_quota()
        await self.pull_log.stop()
        self.problems.stop()
        # Joined in a thread of its own: a commit still running finishes
        # without the reactor waiting on it.
        await deferToThread(self.disk_pool.stop)
        closing = [self.metadata.close(), self.http_pool.closeCachedConnections(),
                   self.proxy_pool.closeCachedConnections(),
                   *(upstream.close() for upstream in self.upstreams.values())]
        if self.s3_pool is not None:
            closing.append(self.s3_pool.closeCachedConnections())
        await DeferredList(closing)
        self.budget.close()
        # Not those another process (a sibling worker) still holds.
        removed = self.store.remove_temp_files()
        if removed:
            log.info("Removed {count} temp files of downloads cut by the stop", count=removed)
        # twistd then re-raises SIGTERM once the reactor has stopped, so the
        # process ends "killed by SIGTERM": systemd counts that as a clean
        # stop (SuccessExitStatus includes it by default).
        log.info("ocicache stopped")


def _scan_manifests(store: Store) -> list[tuple[str, int]]:
    """The stored manifests, as C{(digest, size)}; runs in the disk thread."""
    return [(str(digest), size) for digest, _, size in store.walk(Kind.MANIFEST)]
