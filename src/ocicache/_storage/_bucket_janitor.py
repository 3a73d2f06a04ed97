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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from attrs import define
from twisted.logger import Logger

from .._spec._reference import Digest
from ._bucket import Bucket
from ._metadata import Metadata

__all__ = ["BucketJanitor", "BucketReport"]

log = Logger()


@define
class BucketReport:
    """What one pass over the bucket did."""

    expired: int = 0
    evicted: int = 0
    uploads_aborted: int = 0


class BucketJanitor:
    def __init__(
        self,
        bucket: Bucket,
        metadata: Metadata,
        blob_ttl: float | None,
        abandon_uploads_after: float,
        live_uploads: Callable[[], set[str]] = set,
    ) -> None:
        self._bucket = bucket
        self._capacity = bucket.capacity
        self._metadata = metadata
        self._blob_ttl = blob_ttl
        self._abandon_after = abandon_uploads_after
        self._live_uploads = live_uploads
        self.recovered = False

    async def recover(self) -> None:
        table = self._capacity.table
        listed: dict[Digest, int] = {}
        for info in await self._bucket.objects():
            digest = self._bucket.digest_of(info.key)
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
                 bucket=self._bucket.name, count=len(listed), adopted=adopted, dropped=len(missing))

    async def run(self) -> BucketReport:
        report = BucketReport()
        table = self._capacity.table
        accesses = self._capacity.take_accesses()
        if accesses:
            await self._metadata.touch_blobs(accesses, table=table)
        now = time.time()
        if self._blob_ttl is not None:
            # A pinned closure, or an image being pulled, is never expired.
            protected = await self._capacity.protected()
            expired = [
                Digest.parse(row.digest) for row in await self._metadata.blobs(table)
                if now - max(row.last_access, accesses.get(row.digest, (0.0, 0))[0]) > self._blob_ttl
                and Digest.parse(row.digest) not in protected
            ]
            await self._capacity.delete(expired)
            report.expired = len(expired)
        limit = self._capacity.max_size
        if limit is not None and self._capacity.size > limit:
            report.evicted, _ = await self._capacity.evict(limit)
        report.uploads_aborted = await self._abort_abandoned(now - self._abandon_after)
        return report

    async def _abort_abandoned(self, before: float) -> int:
        live = self._live_uploads()
        aborted = 0
        for upload in await self._bucket.uploads():
            if upload.upload_id in live or _seconds(upload.initiated) >= before:
                continue
            await self._bucket.abort(upload.key, upload.upload_id)
            aborted += 1
        return aborted


def _seconds(initiated: str) -> float:
    """S3's ISO 8601 C{Initiated} as a POSIX time; one that does not parse counts as now."""
    try:
        return datetime.fromisoformat(initiated.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()
