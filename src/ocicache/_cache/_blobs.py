"""
Blob lookups: the store first, then a download in flight, then one new
upstream fetch per digest, however many clients ask at once.

A blob is content-addressed, so one stored copy serves every repository.
It is not served to a repository that has not shown it holds that blob,
though: otherwise anyone could read a private layer through a public
repository's name.  A repository proves it with an upstream C{HEAD}
(distribution-spec "Checking if content exists in the registry"), which
Docker Hub does not count against the pull rate limit, and the proof is
remembered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from .._spec._reference import Digest
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._scrub import quarantine
from .._storage._store import Kind
from .._upstream._body import BodyReceiver
from .._upstream._client import Upstream
from .._upstream._errors import UpstreamUnavailable, answer_error
from ._access import RepoAccess
from ._download import ABANDON_AFTER, KEEP_FRACTION, Download
from ._errors import BlobUnknown
from ._passthrough import PassThrough
from ._result import CacheResult
from ._singleflight import SingleFlight
from ._slots import DEFAULT_DOWNLOADS, DEFAULT_QUEUE, Priority, Slot, Slots
from ._source import Source, StoredFile

__all__ = ["BlobLookup", "BlobService", "FleetClaim", "FleetStep"]

log = Logger()

IDLE_TIMEOUT = 60.0
"""Seconds an upstream body may stay silent before the download fails."""


@frozen
class BlobLookup:
    """
    What a client will be sent: the bytes, and where they came from
    (a hit, a miss that started the download, or a request that joined
    one in flight).
    """

    source: Source
    result: CacheResult


class FleetClaim(Protocol):
    """
    What the fleet step decided for one miss: where its body comes from.
    """

    @property
    def peer(self) -> IResponse | None:
        """Another node's 200 response with the body, or C{None}: fetch it upstream."""

    def done(self, committed: int | None) -> None:
        """This node's download of the digest settled: committed with this size, or not (C{None})."""


class FleetStep(Protocol):
    """
    The fleet's step in the lookup chain (L{ocicache._fleet}): before a
    node fetches a digest upstream, it asks whether another node already
    does; before it asks the upstream for a size, whether another node
    verified it.
    """

    async def claim(self, digest: Digest) -> FleetClaim: ...

    async def size(self, digest: Digest) -> int | None: ...


class _Alone:
    """A single node: every miss is fetched upstream."""

    peer = None

    def done(self, committed: int | None) -> None:
        pass

    async def claim(self, digest: Digest) -> FleetClaim:
        return self

    async def size(self, digest: Digest) -> int | None:
        return None


class BlobService:
    """
    Finds or fetches blobs, and keeps the map of downloads in flight.
    """

    def __init__(
        self,
        disk: Disk,
        access: RepoAccess,
        capacity: Capacity,
        on_upstream_bytes: Callable[[str, int], None] = lambda upstream, count: None,
        slots: Slots | None = None,
        abandon_after: float = ABANDON_AFTER,
        keep_fraction: float = KEEP_FRACTION,
        health: DiskHealth | None = None,
        on_corrupt: Callable[[Digest], None] = lambda digest: None,
        fleet: FleetStep | None = None,
    ) -> None:
        """
        @param slots: the bound on concurrent upstream fetches, shared with
            the manifest service.
        @param abandon_after: seconds after which a download nobody reads
            is abandoned, unless C{keep_fraction} of it has arrived.
        """
        self._disk = disk
        self._slots = slots if slots is not None else Slots(DEFAULT_DOWNLOADS, DEFAULT_QUEUE)
        self._abandon_after = abandon_after
        self._keep_fraction = keep_fraction
        self._reactor = disk.reactor
        self._store = disk.store
        self._metadata = disk.metadata
        self._access = access
        self._capacity = capacity
        self._on_upstream_bytes = on_upstream_bytes
        self._health = health if health is not None else DiskHealth()
        self._on_corrupt = on_corrupt
        self._fleet: FleetStep = fleet if fleet is not None else _Alone()
        self._starting: SingleFlight[Digest, Download | PassThrough] = SingleFlight()
        self.inflight: dict[Digest, Download] = {}
        self._reserved: dict[Digest, int] = {}
        """Room reserved for commits in flight (L{Capacity.make_room})."""

    async def lookup(self, upstream: Upstream, repo: str, digest: Digest) -> BlobLookup:
        stored = self._store.open(Kind.BLOB, digest)
        if stored is not None:
            source = StoredFile(*stored)
            try:
                await self._authorize(upstream, repo, digest)
            except BaseException:
                source.release()
                raise
            self._capacity.accessed(digest)
            return BlobLookup(source, CacheResult.HIT)
        download = self.inflight.get(digest)
        if download is not None and not download.passthrough:
            download.acquire()
            try:
                await self._authorize(upstream, repo, digest)
            except BaseException:
                download.release()
                raise
            return BlobLookup(download, CacheResult.COALESCED)
        starting, joined = self._starting.call(
            digest, lambda: self._start(upstream, repo, digest)
        )
        started = await starting
        started.acquire()
        if joined:
            try:
                await self._authorize(upstream, repo, digest)
            except BaseException:
                started.release()
                raise
        return BlobLookup(started, CacheResult.COALESCED if joined else CacheResult.MISS)

    async def head(self, upstream: Upstream, repo: str, digest: Digest) -> int:
        """
        The size of a blob, from the store or from an upstream C{HEAD}.
        """
        size = self._store.size(Kind.BLOB, digest)
        if size is not None:
            await self._authorize(upstream, repo, digest)
            return size
        download = self.inflight.get(digest)
        if download is not None and download.size is not None:
            await self._authorize(upstream, repo, digest)
            return download.size
        # The fleet step: a size another node verified.
        shared = await self._fleet.size(digest)
        if shared is not None:
            await self._authorize(upstream, repo, digest)
            return shared
        return await self._upstream_head(upstream, repo, digest)

    async def _authorize(self, upstream: Upstream, repo: str, digest: Digest) -> None:
        async def prove() -> None:
            await self._upstream_head(upstream, repo, digest)

        await self._access.check(upstream, repo, digest, prove)

    async def _upstream_head(self, upstream: Upstream, repo: str, digest: Digest) -> int:
        response = await upstream.blob("HEAD", repo, str(digest))
        if response.code != 200:
            raise answer_error(response, self._unknown(upstream, repo, digest))
        length = response.headers.getRawHeaders(b"content-length", [None])[0]
        if length is None or not length.isdigit():
            raise UpstreamUnavailable(f"{upstream.name} sent no blob length")
        return int(length)

    def _unknown(self, upstream: Upstream, repo: str, digest: Digest) -> BlobUnknown:
        return BlobUnknown(f"blob {digest} is unknown to {upstream.name}/{repo}")

    async def _start(self, upstream: Upstream, repo: str, digest: Digest) -> Download | PassThrough:
        """
        Ask the upstream for the blob, within a download slot, and once it
        answers 200 start writing its body: the returned download grows
        while clients read.  The slot is held until the body is in.
        """
        slot = await self._slots.acquire(upstream.name, Priority.BLOB)
        try:
            started = await self._fetch(upstream, repo, digest)
        except BaseException:
            slot.release()
            raise
        started.settled.addBoth(_release, slot)
        return started

    async def _fetch(self, upstream: Upstream, repo: str, digest: Digest) -> Download | PassThrough:
        # The fleet step: when another node is filling this digest, its
        # body comes from that node (and is verified here again), not from
        # the upstream.  The repository still has to show it holds it.
        claim = await self._fleet.claim(digest)
        try:
            if claim.peer is not None:
                try:
                    await self._authorize(upstream, repo, digest)
                except BaseException:
                    await upstream.discard(claim.peer)
                    raise
            started = await self._fill(upstream, repo, digest, claim.peer)
        except BaseException:
            claim.done(None)
            raise
        started.settled.addBoth(_tell_fleet, claim, started)
        return started

    async def _fill(self, upstream: Upstream, repo: str, digest: Digest,
                    peer: IResponse | None) -> Download | PassThrough:
        response = peer if peer is not None else await upstream.blob("GET", repo, str(digest))
        if response.code != 200:
            await upstream.discard(response)
            raise answer_error(response, self._unknown(upstream, repo, digest))
        size = response.length if isinstance(response.length, int) else None
        count = (lambda n: None) if peer is not None else lambda n: self._on_upstream_bytes(upstream.name, n)
        try:
            download = Download(
                self._disk, digest, size, before_commit=self._before_commit, on_disk_error=self._health.failed,
                abandon_after=self._abandon_after, keep_fraction=self._keep_fraction,
            )
        except OSError as e:
            # Not even a temp file: the cache dir is gone, full or
            # read-only.  This client is still served, from memory.
            self._health.failed(e)
            passing = PassThrough(digest, size)
            passing.settled.addErrback(self._passed, digest, upstream.name, repo)
            response.deliverBody(_BodyWriter(passing, self._reactor, count))
            return passing
        self.inflight[digest] = download
        self._access.note(upstream, repo, digest)
        download.settled.addBoth(self._settled, digest, download, upstream.name, repo)
        response.deliverBody(_BodyWriter(download, self._reactor, count))
        return download

    async def _before_commit(self, digest: Digest, size: int) -> bool:
        # In-flight downloads are not in the store yet, so eviction cannot
        # touch them; what it removes may still be read through open
        # descriptors.  The room is reserved until the commit settles.
        kept = await self._capacity.make_room(size)
        if kept:
            self._reserved[digest] = size
        return kept

    def corrupt(self, digest: Digest) -> None:
        """
        A stored blob was found not to match its digest as it was read:
        take it out of the store, so that the next client fetches it again.
        """
        done = Deferred.fromCoroutine(quarantine(self._disk, self._capacity, digest))
        done.addCallback(lambda moved: self._on_corrupt(digest) if moved else None)
        done.addErrback(_log_failure, "quarantine a corrupt blob")

    def _passed(self, failure: Failure, digest: Digest, upstream: str, repo: str) -> None:
        log.warn("Pass-through of {digest} from {upstream}/{repo} failed: {error}",
                 digest=str(digest), upstream=upstream, repo=repo, error=failure.getErrorMessage())

    def _settled(self, result: str | None | Failure, digest: Digest, download: Download,
                 upstream: str, repo: str) -> None:
        if self.inflight.get(digest) is download:
            del self.inflight[digest]
        reserved = self._reserved.pop(digest, None)
        if reserved is not None and not isinstance(result, str):
            self._capacity.release(reserved)  # the commit failed: give the room back
        if isinstance(result, Failure):
            log.warn("Download of {digest} from {upstream}/{repo} failed: {error}",
                     digest=str(digest), upstream=upstream, repo=repo,
                     error=result.getErrorMessage())
            return
        if result is None:
            return
        self._health.works()
        size = download.size or 0
        self._capacity.committed(digest, size)
        self._metadata.put_blob(str(digest), size, time.time()).addErrback(_log_failure, "record blob")


class _BodyWriter(BodyReceiver):
    """
    Feeds an upstream body into a L{Download}, and fails it when the body
    stops arriving for L{IDLE_TIMEOUT} seconds.
    """

    def __init__(self, download: Download | PassThrough, reactor: IReactorTime,
                 counted: Callable[[int], None]) -> None:
        super().__init__(reactor, IDLE_TIMEOUT)
        self._download = download
        self._counted = counted

    def started(self) -> None:
        self._download.attach(self.producer)

    def received(self, data: bytes) -> None:
        self._counted(len(data))
        self._download.write(data)

    def ended(self) -> None:
        self._download.finish()

    def failed(self, reason: Failure) -> None:
        self._download.fail(reason)


def _tell_fleet(result: object, claim: FleetClaim, started: Download | PassThrough) -> object:
    claim.done(started.size if isinstance(started, Download) and started.committed else None)
    return result


def _release(result: object, slot: Slot) -> object:
    slot.release()
    return result


def _log_failure(failure: Failure, what: str) -> None:
    log.failure("Could not {what}", failure, what=what)
