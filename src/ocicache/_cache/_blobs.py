"""
Blob lookups: the store first, then a download in flight, then (with the
S3 backend) the bucket, then one new upstream fetch per digest, however
many clients ask at once.

A blob is content-addressed, so one stored copy serves every repository.
It is not served to a repository that has not shown it holds that blob,
though: otherwise anyone could read a private layer through a public
repository's name.  A repository proves it with an upstream C{HEAD}
(distribution-spec "Checking if content exists in the registry"), which
Docker Hub does not count against the pull rate limit, and the proof is
remembered.  So is an upstream 404 for a digest, briefly (L{NegativeCache}):
a client asking for a missing blob in a loop costs one upstream request
per C{negative_digest_ttl}.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from .._spec._reference import Digest
from .._storage._bucket import Bucket
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._s3 import S3Error, S3Unavailable
from .._storage._scrub import quarantine
from .._storage._store import Kind
from .._upstream._body import BodyReceiver, stop_body
from .._upstream._client import Upstream
from .._upstream._errors import UpstreamUnavailable, answer_error
from ._access import RepoAccess
from ._download import ABANDON_AFTER, KEEP_FRACTION, Download
from ._errors import BlobUnknown
from ._incoming import DownloadError
from ._negative import NegativeCache, NegativeKey
from ._passthrough import PassThrough
from ._ranged import BucketRange
from ._replicate import Replicator
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
        negative: NegativeCache | None = None,
        bucket: Bucket | None = None,
        replicator: Replicator | None = None,
        fleet: FleetStep | None = None,
    ) -> None:
        """
        @param slots: the bound on concurrent upstream fetches, shared with
            the manifest service.
        @param abandon_after: seconds after which a download nobody reads
            is abandoned, unless C{keep_fraction} of it has arrived.
        @param bucket: the S3 store, when blobs live there; C{capacity} is
            then the local disk tier's (C{max_size} 0: nothing kept locally).
        @param replicator: copies each upstream download into C{bucket}.
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
        self._negative = negative if negative is not None else NegativeCache(self._reactor)
        self._bucket = bucket
        self._replicator = replicator
        self._fleet: FleetStep = fleet if fleet is not None else _Alone()
        self._starting: SingleFlight[Digest, Download | PassThrough] = SingleFlight()
        self.inflight: dict[Digest, Download] = {}
        self._reserved: dict[Digest, int] = {}
        """Room reserved for commits in flight (L{Capacity.make_room})."""

    async def lookup(self, upstream: Upstream, repo: str, digest: Digest, ranged: bool = False) -> BlobLookup:
        """
        @param ranged: the client asked for a C{Range}: a blob found only
            in the S3 store is then streamed from the offset the client
            reads first (L{BucketRange}), not downloaded from its start.
        """
        stored = self._store.open(Kind.BLOB, digest)
        if stored is not None:
            source = StoredFile(*stored)
            try:
                await self._authorize(upstream, repo, digest)
            except BaseException:
                source.release()
                raise
            self._capacity.accessed(digest)
            if self._bucket is not None:
                self._bucket.capacity.accessed(digest)
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
        from_bucket = await self._bucket_lookup(upstream, repo, digest, ranged)
        if from_bucket is not None:
            return from_bucket
        self._negative.check(_negative_key(upstream, repo, digest))
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
        size = await self._bucket_size(digest)
        if size is not None:
            await self._authorize(upstream, repo, digest)
            return size
        # The fleet step: a size another node verified.
        shared = await self._fleet.size(digest)
        if shared is not None:
            await self._authorize(upstream, repo, digest)
            return shared
        return await self._upstream_head(upstream, repo, digest)

    # -- the S3 store

    @property
    def redirects(self) -> bool:
        """Whether blob GETs are answered with a redirect to the S3 store when it has them."""
        return self._bucket is not None and self._bucket.redirect

    async def presigned(self, upstream: Upstream, repo: str, digest: Digest) -> str | None:
        """
        A presigned URL of the blob in the bucket, for a C{307}, or C{None}
        when the bucket does not have it (or cannot be reached).
        """
        if self._bucket is None or await self._bucket_size(digest) is None:
            return None
        await self._authorize(upstream, repo, digest)
        self._bucket.capacity.accessed(digest)
        try:
            return await self._bucket.presigned(digest)
        except S3Unavailable:
            return None  # no credentials now: served through ocicache instead

    async def _bucket_size(self, digest: Digest) -> int | None:
        """The blob's size in the bucket; C{None} when it is not there or the store is down."""
        if self._bucket is None or not self._bucket.usable:
            return None
        try:
            return await self._bucket.size(digest)
        except (S3Unavailable, S3Error):
            return None

    async def _bucket_lookup(self, upstream: Upstream, repo: str, digest: Digest,
                             ranged: bool) -> BlobLookup | None:
        """
        The lookup step after the local store and the downloads in flight:
        a blob in the bucket is streamed from it through a L{Download}, so
        it is verified again on the way, joins the singleflight, and fills
        the local tier; or, for a C{Range}, from the client's offset.
        C{None}: not there, or the store failed before sending a byte
        (then the upstream serves).
        """
        bucket = self._bucket
        size = await self._bucket_size(digest)
        if bucket is None or size is None:
            return None
        await self._authorize(upstream, repo, digest)
        bucket.capacity.accessed(digest)
        if ranged:
            return BlobLookup(BucketRange(digest, size, bucket, self._from_bucket), CacheResult.HIT)
        starting, joined = self._starting.call(digest, lambda: self._start_from_bucket(bucket, digest, size))
        try:
            started = await starting
        except _NotInBucket:
            return None
        started.acquire()
        return BlobLookup(started, CacheResult.COALESCED if joined else CacheResult.HIT)

    async def _start_from_bucket(self, bucket: Bucket, digest: Digest, size: int) -> Download | PassThrough:
        try:
            response = await bucket.open(digest)
        except S3Unavailable:
            raise _NotInBucket() from None
        if response is None:
            raise _NotInBucket()
        try:
            download = self._new_download(digest, size)
        except OSError as e:
            self._health.failed(e)
            stop_body(response)
            raise _NotInBucket() from None
        self.inflight[digest] = download
        download.settled.addErrback(self._bad_in_bucket, bucket, digest)
        download.settled.addBoth(self._settled, digest, download, "the S3 store", bucket.name)
        response.deliverBody(self._from_bucket(download))
        return download

    def _bad_in_bucket(self, failure: Failure, bucket: Bucket, digest: Digest) -> Failure:
        """
        An object whose body is not its blob (the digest or the length do
        not match) is deleted, so that the next client fetches it again.
        """
        if failure.check(DownloadError):
            self._on_corrupt(digest)
            removing = Deferred.fromCoroutine(bucket.capacity.delete([digest]))
            removing.addErrback(_log_failure, "delete a corrupt object from the S3 store")
        return failure

    def _from_bucket(self, incoming: Download | PassThrough) -> _BodyWriter:
        """The protocol that feeds an S3 body into a download or a range."""
        bucket = self._bucket
        counted = partial(bucket.on_bytes, "downloaded") if bucket is not None else (lambda count: None)
        return _BodyWriter(incoming, self._reactor, counted)

    async def _authorize(self, upstream: Upstream, repo: str, digest: Digest) -> None:
        async def prove() -> None:
            await self._upstream_head(upstream, repo, digest)

        await self._access.check(upstream, repo, digest, prove)

    async def _upstream_head(self, upstream: Upstream, repo: str, digest: Digest) -> int:
        self._negative.check(_negative_key(upstream, repo, digest))
        response = await upstream.blob("HEAD", repo, str(digest))
        if response.code != 200:
            raise answer_error(response, self._missing(response.code, upstream, repo, digest))
        length = response.headers.getRawHeaders(b"content-length", [None])[0]
        if length is None or not length.isdigit():
            raise UpstreamUnavailable(f"{upstream.name} sent no blob length")
        return int(length)

    def _missing(self, code: int, upstream: Upstream, repo: str, digest: Digest) -> BlobUnknown:
        """What an upstream answer of C{code} says is missing; a 404 is remembered."""
        missing = BlobUnknown(f"blob {digest} is unknown to {upstream.name}/{repo}")
        if code == 404:
            self._negative.remember(_negative_key(upstream, repo, digest), missing, by_digest=True)
        return missing

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
            started: Download | PassThrough | None = None
            if claim.peer is not None:
                try:
                    await self._authorize(upstream, repo, digest)
                except BaseException:
                    await upstream.discard(claim.peer)
                    raise
            elif not isinstance(self._fleet, _Alone):
                started = await self._bucket_after_all(upstream, repo, digest)
            replicated = None
            if started is None:
                started, replicated = await self._fill(upstream, repo, digest, claim.peer)
        except BaseException:
            claim.done(None)
            raise
        if replicated is None:
            started.settled.addBoth(_tell_fleet, claim, started)
        else:
            # The lock is let go once the object is in the bucket too: a
            # node that takes it then finds the blob there.
            both = DeferredList([_observed(started.settled), replicated])
            both.addBoth(lambda result: _tell_fleet(result, claim, started))
        return started

    async def _bucket_after_all(self, upstream: Upstream, repo: str, digest: Digest) -> Download | PassThrough | None:
        """
        In a fleet on the S3 store, the blob another node completed in the
        bucket while this one waited for the fill lock (the filler lets go
        of the lock once its upload is done, and serves only what it still
        has on disk): streamed from the bucket, not fetched again.
        """
        bucket = self._bucket
        if bucket is None:
            return None
        size = await self._bucket_size(digest)
        if size is None:
            return None
        await self._authorize(upstream, repo, digest)
        try:
            download = await self._start_from_bucket(bucket, digest, size)
        except _NotInBucket:
            return None
        bucket.capacity.accessed(digest)
        return download

    async def _fill(self, upstream: Upstream, repo: str, digest: Digest,
                    peer: IResponse | None) -> tuple[Download | PassThrough, Deferred[None] | None]:
        """
        The download of C{peer}'s body, or the upstream's; and, for the
        upstream's, its copy into the S3 store (fired once it is done).
        """
        response = peer if peer is not None else await upstream.blob("GET", repo, str(digest))
        if response.code != 200:
            await upstream.discard(response)
            raise answer_error(response, self._missing(response.code, upstream, repo, digest))
        size = response.length if isinstance(response.length, int) else None
        count = (lambda n: None) if peer is not None else lambda n: self._on_upstream_bytes(upstream.name, n)
        try:
            download = self._new_download(digest, size)
        except OSError as e:
            # Not even a temp file: the cache dir is gone, full or
            # read-only.  This client is still served, from memory.
            self._health.failed(e)
            passing = PassThrough(digest, size)
            passing.settled.addErrback(self._passed, digest, upstream.name, repo)
            response.deliverBody(_BodyWriter(passing, self._reactor, count))
            return passing, None
        self.inflight[digest] = download
        self._access.note(upstream, repo, digest)
        download.settled.addBoth(self._settled, digest, download, upstream.name, repo)
        replicated = None
        if self._replicator is not None and peer is None:
            # The node that fetches from the upstream fills the S3 store;
            # one streaming from that node leaves it to it.
            replicated = self._replicator.replicate(download)
        response.deliverBody(_BodyWriter(download, self._reactor, count))
        return download, replicated

    def _new_download(self, digest: Digest, size: int | None) -> Download:
        """A download into a new temp file; C{OSError} when the disk cannot give one."""
        return Download(
            self._disk, digest, size, before_commit=self._before_commit, on_disk_error=self._health.failed,
            abandon_after=self._abandon_after, keep_fraction=self._keep_fraction,
        )

    async def _before_commit(self, digest: Digest, size: int) -> bool:
        # In-flight downloads are not in the store yet, so eviction cannot
        # touch them; what it removes may still be read through open
        # descriptors.  The room is reserved until the commit settles.
        if self._bucket is not None and self._capacity.max_size == 0:
            return False  # the S3 store without a local tier: nothing kept here
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


class _NotInBucket(Exception):
    """The bucket cannot serve this blob after all: the upstream will."""


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


def _negative_key(upstream: Upstream, repo: str, digest: Digest) -> NegativeKey:
    return (upstream.name, repo, "blob", str(digest))


def _tell_fleet(result: object, claim: FleetClaim, started: Download | PassThrough) -> object:
    claim.done(started.size if isinstance(started, Download) and started.committed else None)
    return result


def _observed(watched: Deferred[Any]) -> Deferred[None]:
    """Fires (never fails) when C{watched} does, leaving C{watched}'s own result alone."""
    seen: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        seen.callback(None)
        return result

    watched.addBoth(fire)
    return seen


def _release(result: object, slot: Slot) -> object:
    slot.release()
    return result


def _log_failure(failure: Failure, what: str) -> None:
    log.failure("Could not {what}", failure, what=what)
