"""
Housekeeping of the S3 store, beside the disk's janitor and on its timer.

Recovery makes the C{bucket_blobs} index agree with the bucket: rows
whose object is gone (another node evicted it) are dropped, and objects
without a row (completed by another node, or before a crash) are adopted
without re-hashing, since an object is only ever completed verified.  Then
the bucket's eviction policy is loaded, oldest access first.

Each pass writes the batched access times, expires objects not read for
C{blob_ttl}, evicts down to C{max_size}, and aborts multipart uploads
under the prefix older than C{abandon_uploads_after} that no replication
of this node is still sending: those of a node killed mid-download.

In a fleet (the bucket has a L{ocicache._storage._bucket.BucketBook}),
the nodes share the bucket's bookkeeping: each pass adds this node's
reads and protected blobs to the fleet's, adds to its index the objects
other nodes completed and drops those they removed.  One node at a time
holds the evictor's turn and expires and evicts; the others skip that
part of the pass.  An object any node read within C{blob_ttl}, or any
node protects, is not expired, and evictions go by the fleet's recency,
oldest read first.  When the book cannot be reached, the pass is a
single node's, as above.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from attrs import define
from twisted.logger import Logger

from .._spec._reference import Digest
from ._bucket import Bucket, SharedPass, digests_among, latest_reads, local_reads
from ._metadata import Metadata

__all__ = ["BucketJanitor", "BucketReport"]

log = Logger()


@define
class BucketReport:
    """What one pass over the bucket did."""

    expired: int = 0
    evicted: int = 0
    uploads_aborted: int = 0
    forgotten: int = 0
    """Objects dropped from this node's index because another node removed them."""
    adopted: int = 0
    """Objects added to this node's index because another node completed them."""
    skipped: bool = False
    """Another node of the fleet held the evictor's turn: this one neither expired nor evicted."""


class BucketJanitor:
    def __init__(
        self,
        bucket: Bucket,
        metadata: Metadata,
        blob_ttl: float | None,
        abandon_uploads_after: float,
        live_uploads: Callable[[], set[str]] = set,
    ) -> None:
        self.bucket = bucket
        self._capacity = bucket.capacity
        self._metadata = metadata
        self._blob_ttl = blob_ttl
        self._abandon_after = abandon_uploads_after
        self._live_uploads = live_uploads
        self.recovered = False

    async def recover(self) -> None:
        table = self._capacity.table
        listed: dict[Digest, int] = {}
        for info in await self.bucket.objects():
            digest = self.bucket.digest_of(info.key)
            if digest is not None:
                listed[digest] = info.size
        rows = {row.digest: row for row in await self._metadata.blobs(table)}
        missing = [text for text in rows if Digest.parse(text) not in listed]
        if missing:
            await self._metadata.delete_blobs(missing, table=table)
        now = time.time()
        adopted = 0
        for digest, size in listed.items():
            if str(digest) not in rows:
                await self._metadata.put_blob(str(digest), size, now, table=table)
                adopted += 1
        ordered = sorted((row for row in rows.values() if row.digest not in missing), key=lambda row: row.last_access)
        self._capacity.load((Digest.parse(row.digest), row.size, row.hits > 1) for row in ordered)
        self._capacity.load((digest, size, False) for digest, size in listed.items() if str(digest) not in rows)
        self.recovered = True
        log.info("The S3 store {bucket} holds {count} blobs ({adopted} new to this node, {dropped} gone)",
                 bucket=self.bucket.name, count=len(listed), adopted=adopted, dropped=len(missing))

    async def run(self) -> BucketReport:
        report = BucketReport()
        table = self._capacity.table
        accesses = self._capacity.take_accesses()
        if accesses:
            await self._metadata.touch_blobs(accesses, table=table)
        shared = await self._share(accesses, report)
        try:
            if shared is not None and not shared.evictor:
                report.skipped = True  # another node's turn: it expires and evicts
            else:
                await self._expire_and_evict(accesses, shared, report)
        finally:
            if shared is not None:
                await shared.end()
        report.uploads_aborted = await self._abort_abandoned(time.time() - self._abandon_after)
        return report

    async def _share(self, accesses: dict[str, tuple[float, int]], report: BucketReport) -> SharedPass | None:
        """
        In a fleet: give the book this node's reads, try to take the
        evictor's turn, and bring the index up to what other nodes did:
        objects they completed are added, those they removed dropped, so
        this node's size of the bucket is the bucket's.
        """
        book = self.bucket.book
        if book is None:
            return None
        mine = {str(digest) for digest in await self.bucket.local_protected()}
        shared = await book.begin({digest: at for digest, (at, _) in accesses.items()}, mine)
        if shared is None:
            return None  # the book cannot be reached: this pass is a single node's
        try:
            await self._catch_up(shared, report)
        except BaseException:
            await shared.end()  # a turn kept would be renewed with no pass to use it
            raise
        return shared

    async def _catch_up(self, shared: SharedPass, report: BucketReport) -> None:
        table = self._capacity.table
        gone = [digest for digest in digests_among(shared.gone) if digest in self._capacity.policy]
        if gone:
            self._capacity.forget(gone)
            await self._metadata.delete_blobs((str(digest) for digest in gone), table=table)
            report.forgotten = len(gone)
        new = [(digest, size) for digest, size in _sized(shared.added) if digest not in self._capacity.policy]
        now = time.time()
        for digest, size in new:
            await self._metadata.put_blob(str(digest), size, now, table=table)
        self._capacity.load((digest, size, False) for digest, size in new)
        report.adopted = len(new)

    async def _expire_and_evict(self, accesses: dict[str, tuple[float, int]], shared: SharedPass | None,
                                report: BucketReport) -> None:
        table = self._capacity.table
        now = time.time()
        rows = await self._metadata.blobs(table)
        read = local_reads(rows, accesses)
        if self._blob_ttl is not None:
            ttl = self._blob_ttl
            # A pinned closure, or an image being pulled, is never expired.
            protected = {str(digest) for digest in await self._capacity.protected()}
            stale = [digest for digest, at in read.items() if now - at > ttl and digest not in protected]
            if shared is not None and stale:
                # Nor is an object another node read within blob_ttl.
                fleet = await shared.last_access(stale)
                if fleet is not None:
                    stale = [digest for digest in stale if now - fleet.get(digest, 0.0) > ttl]
            expired = [Digest.parse(digest) for digest in stale]
            if expired and (shared is None or await shared.holds()):
                await self._capacity.delete(expired)
                report.expired = len(expired)
        # The bucket's budget is every area's: so is eviction.
        limit = self._capacity.max_size
        if limit is None or self._capacity.budget.size <= limit:
            return
        fleet = None if shared is None else await shared.last_access(list(read))
        if shared is None or fleet is None:
            report.evicted, _ = await self._capacity.evict(limit)
        elif await shared.holds():
            # The fleet's recency orders evictions, not this node's queues.
            report.evicted, _ = await self._capacity.evict_oldest(limit, latest_reads(read, fleet))

    async def _abort_abandoned(self, before: float) -> int:
        live = self._live_uploads()
        aborted = 0
        for upload in await self.bucket.uploads():
            if upload.upload_id in live or _seconds(upload.initiated) >= before:
                continue
            await self.bucket.abort(upload.key, upload.upload_id)
            aborted += 1
        return aborted


def _sized(added: Mapping[str, int]) -> Iterator[tuple[Digest, int]]:
    """The digests among C{added}'s keys, with their sizes."""
    for text, size in added.items():
        for digest in digests_among([text]):
            yield digest, size


def _seconds(initiated: str) -> float:
    """S3's ISO 8601 C{Initiated} as a POSIX time; one that does not parse counts as now."""
    try:
        return datetime.fromisoformat(initiated.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()
