"""
The daemon's periodic housekeeping, one pass every C{[cache]
janitor_interval}: the janitor (the first pass recovers the store), the S3
store's janitors (of blobs, and of files), and the upstreams' pull counts
and rate-limit state written for C{ocicache stats} and the next start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .._storage._bucket_janitor import BucketJanitor
from .._storage._janitor import Janitor
from .._storage._metadata import Metadata, MetadataUnavailable
from .._storage._s3 import S3Error, S3Unavailable
from .._upstream._client import Upstream
from .._upstream._ratelimit import Quota

__all__ = ["Housekeeping"]

log = Logger()


class Housekeeping(MultiService):
    """
    The janitor's timer and what each pass does; a failing pass is logged
    and the next one tries again.
    """

    def __init__(self, interval: float, janitor: Janitor, bucket_janitors: Sequence[BucketJanitor],
                 upstreams: Mapping[str, Upstream], metadata: Metadata) -> None:
        MultiService.__init__(self)
        self._janitor = janitor
        self._bucket_janitors = bucket_janitors
        self._upstreams = upstreams
        self._metadata = metadata
        self._flushed_quota: dict[str, Quota] = {}
        TimerService(interval, lambda: Deferred.fromCoroutine(self._janitor_pass())).setServiceParent(self)

    async def _janitor_pass(self) -> None:
        """One janitor pass; the first one recovers the store."""
        janitor = self._janitor
        try:
            if not janitor.recovered:
                await janitor.recover()
            report = await janitor.run()
        except Exception:
            log.failure("Janitor pass failed")
            return
        finally:
            await self.flush_quota()
        if (report.expired or report.evicted or report.temp_removed or report.tags_removed
                or report.manifests_removed):
            log.info(
                "Janitor: expired {expired} blobs ({expired_bytes} B), evicted {evicted} ({evicted_bytes} B),"
                " removed {temp} abandoned temp files, {tags} old tag rows and {manifests} unreferenced"
                " manifests",
                expired=report.expired, expired_bytes=report.expired_bytes, evicted=report.evicted,
                evicted_bytes=report.evicted_bytes, temp=report.temp_removed, tags=report.tags_removed,
                manifests=report.manifests_removed,
            )
        for bucket_janitor in self._bucket_janitors:
            await self._bucket_pass(bucket_janitor)

    async def _bucket_pass(self, janitor: BucketJanitor) -> None:
        """The bucket's pass: an unreachable store is said once (its health), not per pass."""
        try:
            if not janitor.recovered:
                await janitor.recover()
            report = await janitor.run()
        except (S3Unavailable, S3Error):
            return
        except Exception:
            log.failure("S3 store janitor pass failed")
            return
        if report.expired or report.evicted or report.uploads_aborted:
            log.info("S3 store janitor ({bucket}): expired {expired} entries, evicted {evicted}, aborted {aborted}"
                     " abandoned uploads", bucket=janitor.bucket.name, expired=report.expired, evicted=report.evicted,
                     aborted=report.uploads_aborted)
        if report.forgotten or report.adopted:
            log.debug("S3 store janitor ({bucket}): indexed {adopted} entries other nodes stored, forgot {forgotten}"
                      " they removed", bucket=janitor.bucket.name, adopted=report.adopted, forgotten=report.forgotten)

    async def flush_quota(self) -> None:
        """
        Write each upstream's pull-equivalents since the last flush and its
        last rate-limit values, for C{ocicache stats} and the next start.
        """
        for upstream in self._upstreams.values():
            made, saved = upstream.pulls()
            quota = upstream.quota
            if not made and not saved and quota == self._flushed_quota.get(upstream.name, Quota()):
                continue
            try:
                await self._metadata.add_quota(upstream.name, made, saved, quota)
            except MetadataUnavailable as e:
                log.warn("Could not record the pull counts of {upstream}: {error}",
                         upstream=upstream.name, error=str(e))
                return
            upstream.flushed(made, saved)
            self._flushed_quota[upstream.name] = quota

    async def restore_quota(self) -> None:
        """
        The rate-limit state of the last run: an upstream that was left
        alone is still left alone until its window passes, restart or not.
        """
        for row in await self._metadata.quota():
            upstream = self._upstreams.get(row.upstream)
            if upstream is not None:
                quota = Quota(limit=row.limit, remaining=row.remaining, window=row.window, source=row.source,
                              observed_at=row.observed_at, limited_until=row.limited_until)
                self._flushed_quota[row.upstream] = quota
                upstream.restore(quota)
