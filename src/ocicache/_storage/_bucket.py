"""
Blobs in an S3 bucket: the S3 backend's store.

The layout mirrors the disk's, under the configured prefix:

    <prefix>blobs/sha256/<hex>
    <prefix>git/sha256/<hex>

one area per kind of entry (L{Bucket.area}), each with its own index
table.  An object exists only once its bytes were verified: it is written by a
multipart upload that is completed only after the download's SHA-256 and
length matched (L{ocicache._fetch._replicate}), so it appears whole or not
at all.  Its index is the C{bucket_blobs} table of the metadata, loaded
into the bucket's L{Capacity} policy, which also orders its evictions.

Every call goes through L{Bucket}, which keeps L{BucketHealth}: when the
store cannot be reached it is skipped for L{RETRY_AFTER} seconds, so
clients are served from the upstream meanwhile without waiting on it.

In a fleet, the nodes on one bucket share a L{BucketBook} (implemented
over Redis by L{ocicache._fleet._bucket_book}): the fleet's read times of
the objects, what each node protects, whose turn it is to expire and
evict, and which objects were completed and removed, so that no node
expires what another serves, each node's index counts what the bucket
holds, and one evicts at a time.  A single node has none.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Protocol, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from .._spec._reference import Digest
from ._budget import Budget
from ._capacity import Capacity
from ._disk import Disk
from ._metadata import BlobRow, MetadataUnavailable
from ._s3 import ObjectInfo, S3Client, S3Error, S3Unavailable, Upload

__all__ = ["Bucket", "BucketBook", "BucketHealth", "RETRY_AFTER", "SharedPass", "digests_among", "latest_reads",
           "local_reads"]

log = Logger()

T = TypeVar("T")

RETRY_AFTER = 5.0
"""Seconds the bucket is skipped after it could not be reached."""

PRESIGN_EXPIRES = 1200
"""Seconds a redirect's presigned URL is valid: distribution's default (20 minutes)."""


_ANSWERS = frozenset({"NoSuchKey", "NoSuchUpload"})
"""S3 errors that are answers about one object, not about the store."""


def digests_among(texts: Iterable[str]) -> Iterator[Digest]:
    """The digests among C{texts}: what the fleet's book says is another process's word, checked as any."""
    for text in texts:
        try:
            yield Digest.parse(text)
        except ValueError:
            continue


def local_reads(rows: Iterable[BlobRow], pending: Mapping[str, tuple[float, int]]) -> dict[str, float]:
    """Each indexed object's latest read by this node: its row's, or a read not yet written to it."""
    return {row.digest: max(row.last_access, pending.get(row.digest, (0.0, 0))[0]) for row in rows}


def latest_reads(local: Mapping[str, float], fleet: Mapping[str, float]) -> dict[Digest, float]:
    """Each object's latest read by any node: this node's (L{local_reads}), or the fleet's if later."""
    return {Digest.parse(digest): max(at, fleet.get(digest, 0.0)) for digest, at in local.items()}


class SharedPass(Protocol):
    """
    One janitor pass's view of the fleet's book (L{BucketBook.begin}).
    """

    @property
    def evictor(self) -> bool:
        """Whether this node holds the evictor's turn: it alone expires and evicts this pass."""

    @property
    def added(self) -> Mapping[str, int]:
        """Objects other nodes completed in the bucket since this node last asked (digest to size)."""

    @property
    def gone(self) -> Sequence[str]:
        """Digests other nodes removed from the bucket since this node last asked."""

    async def last_access(self, digests: Sequence[str]) -> Mapping[str, float] | None:
        """
        The latest read of each digest by any node (POSIX seconds; absent:
        none recorded), or C{None} when the book cannot be read now: then
        the pass judges on this node's reads alone.
        """

    async def holds(self) -> bool:
        """Whether the evictor's turn is still this node's (it may have expired in a stall)."""

    async def end(self) -> None:
        """Give the evictor's turn back, if held."""


class BucketBook(Protocol):
    """
    The eviction bookkeeping the nodes on one bucket share.  Never in the
    way: when it cannot be reached, L{begin} answers C{None} at once and
    the janitor does as a single node does.
    """

    async def begin(self, accesses: Mapping[str, float], protected: Collection[str] = ()) -> SharedPass | None:
        """
        Add this node's reads since its last pass (digest to POSIX time),
        replace the blobs this node protects (its pins, the images being
        pulled through it), and try to take the evictor's turn.
        """

    async def protected(self) -> set[str] | None:
        """The blobs any node of the fleet protects, or C{None} when the book cannot be read now."""

    async def added(self, digest: str, size: int) -> None:
        """Say that this object was completed in the bucket, for the other nodes' indexes."""

    async def removed(self, digests: Sequence[str]) -> None:
        """Say that these objects were deleted from the bucket, for the other nodes' indexes."""

    async def last_access(self, digests: Sequence[str]) -> Mapping[str, float] | None:
        """As L{SharedPass.last_access}, outside a pass: to make room for a new object."""


class BucketHealth:
    """
    Whether the object store answers: one warning when it stops, one line
    when it is back, and the reason for C{/readyz}.
    """

    def __init__(self, reactor: IReactorTime, where: str) -> None:
        self._reactor = reactor
        self._where = where
        self.problem: str | None = None
        self._failed_at = 0.0

    @property
    def usable(self) -> bool:
        """Worth trying now: it works, or it failed long enough ago."""
        return self.problem is None or self._reactor.seconds() - self._failed_at >= RETRY_AFTER

    def failed(self, error: S3Unavailable) -> None:
        self._failed_at = self._reactor.seconds()
        if self.problem is None:
            log.error("The S3 store {where} is unavailable ({error}); serving from the upstream until it is back",
                      where=self._where, error=str(error))
        self.problem = f"S3 store {self._where} is unavailable: {error}"

    def works(self) -> None:
        if self.problem is not None:
            self.problem = None
            log.info("The S3 store {where} works again", where=self._where)


class Bucket:
    """
    The blobs of one bucket under one prefix, with their index and
    eviction policy (C{capacity}, over the C{bucket_blobs} table).
    """

    def __init__(
        self,
        client: S3Client,
        prefix: str,
        disk: Disk,
        max_size: int | None,
        redirect: bool = False,
        on_evicted: Callable[[int, int], None] = lambda count, size: None,
        on_bytes: Callable[[str, int], None] = lambda direction, count: None,
        on_upload: Callable[[str], None] = lambda outcome: None,
        protected: Callable[[], Awaitable[Iterable[Digest]]] | None = None,
        book: BucketBook | None = None,
        area: str = "blobs",
        table: str = "bucket_blobs",
        health: BucketHealth | None = None,
        budget: Budget | None = None,
    ) -> None:
        """
        @param area: the key prefix of this kind of entry under C{prefix}
            (a constant of the code, never a client's input).
        @param table: the metadata table that indexes its objects
            (L{ocicache._storage._metadata.BLOB_TABLES}).
        @param health: shared with the other areas of the same store.
        @param budget: shared with the other areas of the same store
            (then C{max_size} is its); by default, one of C{max_size}.
        @param book: the fleet's shared bookkeeping of the bucket, when
            several nodes use it; C{None}: this node alone.
        @param protected: the blobs eviction and expiry must leave (pins,
            images being pulled), as for the disk (L{Capacity}); in a
            fleet, with those of the other nodes (L{BucketBook.protected}).
        @param max_size: the bucket's byte budget (C{[cache] max_size}),
            kept by evicting objects; C{None}: no limit.
        @param on_bytes: told C{("uploaded" | "downloaded", count)} as blob
            bytes go to or come from the store.
        @param on_upload: told C{"completed"} or C{"aborted"} as each
            multipart upload ends.
        """
        self.book = book
        self.area = area
        self.on_bytes = on_bytes
        self.on_upload = on_upload
        self.client = client
        self.prefix = prefix
        self._local_protected = protected
        self.capacity = Capacity(budget if budget is not None else Budget(disk.store.root, max_size), disk,
                                 on_evicted,
                                 protected=self._protected if protected is not None or book is not None else None,
                                 remove=self.remove,
                                 table=table, recency=self._recency if book is not None else None)
        self._metadata = disk.metadata
        self.redirect = redirect
        self.name = f"{client.bucket}/{prefix}"
        self.health = health if health is not None else BucketHealth(disk.reactor, self.name)
        self._disk = disk

    def sibling(self, area: str, table: str) -> Bucket:
        """
        Another kind of entry in the same store: its own key area and
        index, in the same budget (C{[cache] max_size} bounds the bucket
        as a whole, and eviction chooses among every area), with the same
        client, health and byte counters.  Its read times are this node's
        own (no fleet book: the book names blobs).
        """
        other = Bucket(self.client, self.prefix, self._disk, self.capacity.max_size, on_bytes=self.on_bytes,
                       on_upload=self.on_upload, area=area, table=table, health=self.health,
                       budget=self.capacity.budget)
        other.name = f"{self.name}{area}/"  # in its log lines: which area
        return other

    @property
    def usable(self) -> bool:
        return self.health.usable

    async def local_protected(self) -> set[Digest]:
        """The blobs this node's eviction and expiry must leave (its pins, its pulls)."""
        return set(await self._local_protected()) if self._local_protected is not None else set()

    async def _protected(self) -> set[Digest]:
        """
        This node's protected blobs, and in a fleet every node's: a pin on
        one node holds in the bucket whichever node evicts.  The book not
        answering, this node's alone.
        """
        keep = await self.local_protected()
        shared = await self.book.protected() if self.book is not None else None
        keep.update(digests_among(shared or ()))
        return keep

    async def _recency(self) -> Mapping[Digest, float] | None:
        """
        In a fleet, the latest read of each indexed object by any node, for
        the room a new object needs (L{Capacity.make_room}): this node's
        reads, pending ones too, with the book's; C{None} when either
        cannot be read now (then this node's S3FIFO queues decide).
        """
        if self.book is None:
            return None
        try:
            rows = await self._metadata.blobs(self.capacity.table)
        except MetadataUnavailable:
            return None
        local = local_reads(rows, self.capacity.pending_accesses())
        fleet = await self.book.last_access(list(local))
        return None if fleet is None else latest_reads(local, fleet)

    def key(self, digest: Digest) -> str:
        # Digest.parse checked the algorithm and the hex: no key can escape the prefix.
        return f"{self.prefix}{self.area}/{digest.algorithm}/{digest.encoded}"

    def digest_of(self, key: str) -> Digest | None:
        """The digest an object's key names, or C{None} for a key that is not ours."""
        head = f"{self.prefix}{self.area}/"
        if not key.startswith(head):
            return None
        algorithm, _, encoded = key[len(head):].partition("/")
        try:
            return Digest.parse(f"{algorithm}:{encoded}")
        except ValueError:
            return None

    async def guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one S3 call, keeping the health: an unreachable store is said once."""
        try:
            result = await call()
        except S3Unavailable as e:
            self.health.failed(e)
            raise
        except S3Error as e:
            # A missing object or upload is an answer; any other refusal
            # (AccessDenied, NoSuchBucket, a bad signature) means the store
            # cannot be used as configured.
            if e.code not in _ANSWERS:
                self.health.failed(S3Unavailable(str(e)))
            raise
        self.health.works()
        return result

    async def size(self, digest: Digest) -> int | None:
        """
        The size of the stored blob, or C{None}: the index first (loaded
        from the metadata), else an S3 C{HEAD}, for objects another node
        completed since the index was loaded.  Raises L{S3Unavailable} or
        L{S3Error}.
        """
        size = self.capacity.policy.size_of(digest)
        if size is not None:
            return size
        info = await self.guarded(lambda: self.client.head(self.key(digest)))
        if info is None:
            return None
        # Stored by another node since the index was loaded: index it here
        # too, so that expiry and eviction see it.
        self.capacity.load([(digest, info.size, False)])
        await self._metadata.put_blob(str(digest), info.size, time.time(), table=self.capacity.table)
        return info.size

    async def open(self, digest: Digest) -> IResponse | None:
        """
        The object's C{GET} response, unread; C{None} when it is gone
        (another node evicted it): then it leaves the index.
        """
        try:
            return await self.guarded(lambda: self.client.get(self.key(digest)))
        except S3Error as e:
            if e.code != "NoSuchKey":
                raise S3Unavailable(f"GET answered {e.status} {e.code}") from None
        self.capacity.forget([digest])
        await self._metadata.delete_blobs([str(digest)], table=self.capacity.table)
        return None

    async def presigned(self, digest: Digest) -> str:
        return await self.client.presigned_get(self.key(digest), PRESIGN_EXPIRES)

    async def remove(self, digests: list[Digest]) -> None:
        """
        Delete objects (the capacity's remover): eviction and expiry over
        the bucket, and an object found corrupt.  The fleet's book is told,
        so the other nodes' indexes drop them too.
        """
        done: list[str] = []
        try:
            for digest in digests:
                await self.guarded(partial(self.client.delete, self.key(digest)))
                done.append(str(digest))
        finally:
            if self.book is not None and done:
                await self.book.removed(done)

    async def objects(self) -> list[ObjectInfo]:
        return await self.guarded(lambda: self.client.objects(f"{self.prefix}{self.area}/"))

    async def uploads(self) -> list[Upload]:
        return await self.guarded(lambda: self.client.uploads(f"{self.prefix}{self.area}/"))

    async def abort(self, key: str, upload_id: str) -> None:
        await self.guarded(lambda: self.client.abort_upload(key, upload_id))
