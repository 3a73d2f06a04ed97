"""
Blob lookups, the OCI front-end of the fetch core: the local store, then a
download in flight, then (with the S3 backend) the bucket, walked by
L{TierWalk}; on a miss, one upstream fetch per digest however many
clients ask, wrapped in the fleet's claim.

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

from collections.abc import Callable
from functools import partial
from typing import Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from .._fetch._bucket_tier import BucketTier, NotInBucket
from .._fetch._claim import ALONE, Claim, ClaimStep, settle_claim
from .._fetch._download import ABANDON_AFTER, KEEP_FRACTION, Download
from .._fetch._elsewhere import ElsewhereTier
from .._fetch._feed import Feed
from .._fetch._fills import Fills
from .._fetch._host_fills import HostFills
from .._fetch._negative import NegativeCache, NegativeKey
from .._fetch._observe import observed
from .._fetch._passthrough import PassThrough
from .._fetch._replicate import Replicator
from .._fetch._sink import DiskSink
from .._fetch._slots import DEFAULT_DOWNLOADS, DEFAULT_QUEUE, Priority, Slot, Slots
from .._fetch._source import StoredFile, VerifiedFile
from .._fetch._tiers import InFlightTier, StoreTier
from .._fetch._walk import Hit, Tier, TierWalk, Want
from .._spec._reference import Digest
from .._storage._bucket import Bucket
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._s3 import S3Unavailable
from .._storage._scrub import quarantine
from .._storage._store import Kind
from .._upstream._client import Upstream
from .._upstream._errors import UpstreamUnavailable, answer_error
from ._access import RepoAccess
from ._errors import BlobUnknown

__all__ = ["BlobLookup", "BlobService", "FleetClaim", "FleetStep"]

log = Logger()

BlobLookup = Hit
"""What a client will be sent: the bytes, and whether they were a hit, a miss or coalesced."""


FleetClaim = Claim
"""What the fleet step decided for one miss (the fetch core's L{Claim})."""


class FleetStep(ClaimStep, Protocol):
    """
    The fleet's step around a blob's miss (L{ocicache._fleet}): before a
    node fetches a digest upstream, it asks whether another node already
    does (L{ClaimStep}); before it asks the upstream for a size, whether
    another node verified it.
    """

    async def size(self, digest: Digest) -> int | None: ...


class _Alone:
    """A single node: every miss is fetched upstream, every size asked of it."""

    async def claim(self, digest: Digest) -> FleetClaim:
        return ALONE

    async def size(self, digest: Digest) -> int | None:
        return None


class _BlobBooks:
    """The books of blobs stored on local disk (L{Keeper})."""

    def __init__(self, disk: Disk, capacity: Capacity, local: bool) -> None:
        self._disk = disk
        self._capacity = capacity
        self._local = local

    async def make_room(self, key: Digest, size: int) -> bool:
        if not self._local:
            return False  # the S3 store without a local tier: nothing kept here
        return await self._capacity.make_room(size)

    def kept(self, key: Digest, size: int) -> None:
        self._capacity.keep(key, size)

    def not_kept(self, key: Digest, size: int) -> None:
        self._capacity.release(size)


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
        self._reactor = disk.reactor
        self._slots = slots if slots is not None else Slots(DEFAULT_DOWNLOADS, DEFAULT_QUEUE)
        self._access = access
        self._capacity = capacity
        self._on_upstream_bytes = on_upstream_bytes
        self._on_corrupt = on_corrupt
        self._negative = negative if negative is not None else NegativeCache(self._reactor)
        self._replicator = replicator
        self._fleet: FleetStep = fleet if fleet is not None else _Alone()
        self._fills: Fills[Digest] = Fills()
        local = bucket is None or capacity.max_size != 0
        self._sink = DiskSink(disk, self._fills, _BlobBooks(disk, capacity, local),
                              health if health is not None else DiskHealth(), Kind.BLOB,
                              abandon_after, keep_fraction)
        self._bucket = None if bucket is None else BucketTier(bucket, self._fills, self._sink, self._reactor,
                                                              on_corrupt)
        host: HostFills[Digest] = HostFills(disk, Kind.BLOB)
        tiers: list[Tier[Digest]] = [StoreTier(disk.store, Kind.BLOB, self._accessed), InFlightTier(self._fills),
                                     ElsewhereTier(host)]
        if self._bucket is not None:
            tiers.append(self._bucket)
        self._walk = TierWalk(tiers, self._fills, host)

    @property
    def inflight(self) -> dict[Digest, Download]:
        """The downloads in flight, by digest."""
        return self._fills.inflight

    async def lookup(self, upstream: Upstream, repo: str, digest: Digest, ranged: bool = False) -> BlobLookup:
        """
        @param ranged: the client asked for a C{Range}: a blob found only
            in the S3 store is then streamed from the offset the client
            reads first (L{ocicache._fetch._ranged.BucketRange}), not
            downloaded from its start.
        """
        return await self._walk.open(digest, Want(ranged), partial(self._authorize, upstream, repo, digest),
                                     partial(self._start, upstream, repo, digest))

    async def head(self, upstream: Upstream, repo: str, digest: Digest) -> int:
        """
        The size of a blob, from the tiers, the fleet, or an upstream C{HEAD}.
        """
        authorize = partial(self._authorize, upstream, repo, digest)
        size = await self._walk.size(digest, authorize)
        if size is not None:
            return size
        # The fleet step: a size another node verified.
        shared = await self._fleet.size(digest)
        if shared is not None:
            await authorize()
            return shared
        return await self._upstream_head(upstream, repo, digest)

    def _accessed(self, digest: Digest) -> None:
        self._capacity.accessed(digest)
        if self._bucket is not None:
            self._bucket.bucket.capacity.accessed(digest)

    # -- the S3 store

    @property
    def redirects(self) -> bool:
        """Whether blob GETs are answered with a redirect to the S3 store when it has them."""
        return self._bucket is not None and self._bucket.bucket.redirect

    async def presigned(self, upstream: Upstream, repo: str, digest: Digest) -> str | None:
        """
        A presigned URL of the blob in the bucket, for a C{307}, or C{None}
        when the bucket does not have it (or cannot be reached).
        """
        if self._bucket is None or await self._bucket.find(digest) is None:
            return None
        await self._authorize(upstream, repo, digest)
        bucket = self._bucket.bucket
        bucket.capacity.accessed(digest)
        try:
            return await bucket.presigned(digest)
        except S3Unavailable:
            return None  # no credentials now: served through ocicache instead

    # -- access

    async def _authorize(self, upstream: Upstream, repo: str, digest: Digest) -> None:
        async def prove() -> None:
            await self._upstream_head(upstream, repo, digest)

        await self._access.check(upstream, repo, digest, prove)

    async def _upstream_head(self, upstream: Upstream, repo: str, digest: Digest) -> int:
        await self._negative.check(_negative_key(upstream, repo, digest))
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

    # -- the miss

    async def _start(self, upstream: Upstream, repo: str, digest: Digest) -> Download | PassThrough:
        """
        Ask the upstream for the blob, within a download slot, and once it
        answers 200 start writing its body: the returned download grows
        while clients read.  The slot is held until the body is in.
        """
        await self._negative.check(_negative_key(upstream, repo, digest))
        slot = await self._slots.acquire(upstream.name, Priority.BLOB)
        try:
            started = await self._claimed(upstream, repo, digest)
        except BaseException:
            slot.release()
            raise
        started.settled.addBoth(_release, slot)
        return started

    async def _claimed(self, upstream: Upstream, repo: str, digest: Digest) -> Download | PassThrough:
        """
        The fill, within the fleet's claim: when another node is filling
        this digest, its body comes from that node (and is verified here
        again), not from the upstream; the repository still has to show
        it holds it.
        """
        claim = await self._fleet.claim(digest)
        replicated: list[Deferred[None]] = []
        try:
            started: Download | PassThrough | None = None
            if claim.peer is not None:
                try:
                    await self._authorize(upstream, repo, digest)
                except BaseException:
                    await upstream.discard(claim.peer)
                    raise
            elif claim.shared:
                started = await self._bucket_after_all(upstream, repo, digest)
            if started is None:
                started = await self._fill(upstream, repo, digest, claim.peer, replicated)
        except BaseException:
            claim.done(None)
            raise
        # The claim is let go once the object is in the bucket too: a node
        # that takes it then finds the blob there.
        done = DeferredList([observed(started.settled), *replicated])
        done.addBoth(settle_claim, claim, started)
        return started

    async def _bucket_after_all(self, upstream: Upstream, repo: str, digest: Digest) -> Download | PassThrough | None:
        """
        In a fleet on the S3 store, the blob another node completed in the
        bucket while this one waited for the fill lock (the filler lets go
        of the lock once its upload is done, and serves only what it still
        has on disk): streamed from the bucket, not fetched again.
        """
        tier = self._bucket
        found = await tier.find(digest) if tier is not None else None
        if tier is None or found is None or found.size is None:
            return None
        await self._authorize(upstream, repo, digest)
        try:
            download = await tier.stream(digest, found.size)
        except NotInBucket:
            return None
        tier.bucket.capacity.accessed(digest)
        return download

    async def _fill(self, upstream: Upstream, repo: str, digest: Digest, peer: IResponse | None,
                    replicated: list[Deferred[None]]) -> Download | PassThrough:
        """
        The sink of C{peer}'s body, or the upstream's; for the upstream's,
        its copy into the S3 store is added to C{replicated}.
        """
        response = peer if peer is not None else await upstream.blob("GET", repo, str(digest))
        if response.code != 200:
            await upstream.discard(response)
            raise answer_error(response, self._missing(response.code, upstream, repo, digest))
        size = response.length if isinstance(response.length, int) else None
        replicator = self._replicator if peer is None else None

        def replicate(download: Download) -> Deferred[None] | None:
            # The node that fetches from the upstream fills the S3 store;
            # one streaming from that node leaves it to it.
            copied = replicator.replicate(download, digest) if replicator is not None else None
            if copied is not None:
                replicated.append(copied)
            return copied

        started = self._sink.open(digest, size, f"{upstream.name}/{repo}", replicate)
        if isinstance(started, Download):
            self._access.note(upstream, repo, digest)
        count: Callable[[int], None] = (
            (lambda n: None) if peer is not None else partial(self._on_upstream_bytes, upstream.name))
        response.deliverBody(Feed(started, self._reactor, count))
        return started

    def verified(self, source: StoredFile, digest: Digest, piece: Callable[[], int]) -> VerifiedFile:
        """
        C{source}, a stored blob, checked against C{digest} as it is read,
        the reading and hashing in the disk pool C{piece()} bytes at a time.
        """
        return source.verified(digest, self.corrupt, self._disk.run, piece)

    def corrupt(self, digest: Digest) -> None:
        """
        A stored blob was found not to match its digest as it was read:
        take it out of the store, so that the next client fetches it again.
        """
        done = Deferred.fromCoroutine(quarantine(self._disk, self._capacity, digest))
        done.addCallback(lambda moved: self._on_corrupt(digest) if moved else None)
        done.addErrback(_log_failure, "quarantine a corrupt blob")


def _negative_key(upstream: Upstream, repo: str, digest: Digest) -> NegativeKey:
    return (upstream.name, repo, "blob", str(digest))


def _release(result: object, slot: Slot) -> object:
    slot.release()
    return result


def _log_failure(failure: Failure, what: str) -> None:
    log.failure("Could not {what}", failure, what=what)
