"""
Warming and pinning: the daemon fetches an image's whole closure itself,
through the same services that answer clients, so singleflight, the
download bounds and the store's rules hold as for any pull.

The closure of a reference is its manifest; for an index, only the
manifests of the platforms asked for (image-spec image-index.md); then
each image manifest's config and layers (manifest.md).  A pin records the
manifests it holds (L{Metadata.put_pin}); eviction and expiry leave every
blob they refer to.  A pin of a tag follows the tag: L{Warmer.follow_pins}
re-resolves it (the manifest service revalidates after C{tag_ttl}) and,
when it moved, pins the new closure and releases the old in one step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.logger import Logger

from .._fetch._incoming import DownloadError
from .._fetch._result import CacheResult
from .._fetch._source import Source
from .._spec._closure import INDEX_MEDIA_TYPES, Descriptor, Platform, image_blobs, index_manifests, select_platforms
from .._spec._media_types import MANIFEST_MEDIA_TYPES
from .._spec._reference import Digest, ImageReference
from .._storage._disk import Disk
from .._upstream._client import Upstream
from ._blobs import BlobService
from ._errors import ManifestUnknown, PinRefused, RepositoryUnknown
from ._manifests import Manifest, ManifestService

__all__ = ["BlobOutcome", "WarmReport", "Warmer"]

log = Logger()

CONCURRENT_BLOBS = 4
"""Blobs of one warm run fetched at once (each still within the download slots)."""


@frozen
class BlobOutcome:
    """One blob of a warm run: C{fetched}, C{cached} (already there) or C{failed} (with why)."""

    digest: str
    size: int
    outcome: str
    error: str | None = None


@define
class WarmReport:
    """What one warm run of one reference did."""

    upstream: str
    repo: str
    reference: str
    digest: str | None = None
    """What the reference resolved to."""
    manifests: list[tuple[str, str | None, str]] = field(factory=list)
    """C{(digest, platform or None, cache result)} of each manifest of the closure."""
    blobs: list[BlobOutcome] = field(factory=list)
    error: str | None = None
    """Why the run failed before its blobs, if it did."""

    @property
    def failed(self) -> list[BlobOutcome]:
        return [blob for blob in self.blobs if blob.outcome == "failed"]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed

    def count(self, outcome: str) -> tuple[int, int]:
        """How many blobs had C{outcome}, and their bytes."""
        chosen = [blob for blob in self.blobs if blob.outcome == outcome]
        return len(chosen), sum(blob.size for blob in chosen)

    def as_json(self) -> dict[str, Any]:
        fetched, fetched_bytes = self.count("fetched")
        cached, cached_bytes = self.count("cached")
        return {
            "upstream": self.upstream, "repo": self.repo, "reference": self.reference, "digest": self.digest,
            "manifests": [{"digest": d, "platform": p, "result": r} for d, p, r in self.manifests],
            "fetched": {"blobs": fetched, "bytes": fetched_bytes},
            "cached": {"blobs": cached, "bytes": cached_bytes},
            "failed": [{"digest": b.digest, "error": b.error} for b in self.failed],
            "error": self.error,
        }


@frozen
class _Closure:
    top: Manifest
    manifests: list[tuple[Manifest, str | None, CacheResult]]
    blobs: list[Descriptor]


class _Drain:
    """
    A reader that is always caught up: it keeps a download from being
    abandoned (somebody reads it) without holding any bytes back.
    """

    def __init__(self, source: Source) -> None:
        self._source = source

    @property
    def position(self) -> int:
        return self._source.available

    def data_arrived(self) -> None:
        pass


class Warmer:
    def __init__(
        self,
        disk: Disk,
        manifests: ManifestService,
        blobs: BlobService,
        upstreams: dict[str, Upstream],
        max_size: Callable[[], int | None],
        on_blob: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self._disk = disk
        self._manifests = manifests
        self._blobs = blobs
        self._metadata = disk.metadata
        self._upstreams = upstreams
        self._max_size = max_size
        self._on_blob = on_blob

    def target(self, image: ImageReference) -> tuple[Upstream, str]:
        """
        The upstream and repository an image reference names: its registry,
        or the default upstream when it names none; Docker Hub's one-segment
        names under C{library/}, as clients address them.
        """
        if image.registry is None:
            upstream = next((u for u in self._upstreams.values() if u.config.default), None)
            if upstream is None:
                raise RepositoryUnknown(f"{image} names no registry, and no upstream is the default")
        else:
            found = self._upstreams.get(image.registry)
            if found is None:
                raise RepositoryUnknown(f"no upstream is named {image.registry!r}")
            upstream = found
        repo = image.repository
        if upstream.config.is_docker_hub and "/" not in repo:
            repo = f"library/{repo}"
        return upstream, repo

    # -- warming

    async def warm(self, upstream: Upstream, repo: str, reference: Digest | str,
                   platforms: Sequence[Platform]) -> WarmReport:
        """Fetch the closure of C{reference} for C{platforms}; never raises for the upstream's failures."""
        report = WarmReport(upstream.name, repo, str(reference))
        try:
            closure = await self._resolve(upstream, repo, reference, platforms, report)
        except Exception as e:
            report.error = _why(e)
            return report
        await self._fetch_blobs(upstream, repo, closure.blobs, report)
        return report

    async def _resolve(self, upstream: Upstream, repo: str, reference: Digest | str,
                       platforms: Sequence[Platform], report: WarmReport) -> _Closure:
        found = await self._manifests.lookup(upstream, repo, reference, MANIFEST_MEDIA_TYPES)
        top = found.manifest
        report.digest = str(top.digest)
        report.manifests.append((str(top.digest), None, str(found.result)))
        manifests: list[tuple[Manifest, str | None, CacheResult]] = [(top, None, found.result)]
        if top.media_type in INDEX_MEDIA_TYPES:
            # Up to 4 MiB of JSON: parsed in the disk thread, as the manifest service does.
            chosen = select_platforms(await self._disk.run(index_manifests, top.body), platforms)
            if not chosen:
                raise ManifestUnknown(f"{repo}:{reference} has no manifest for {', '.join(map(str, platforms))}")
            for entry in chosen:
                child = await self._manifests.lookup(upstream, repo, entry.digest, MANIFEST_MEDIA_TYPES)
                described = str(entry.platform) if entry.platform is not None else None
                report.manifests.append((str(child.manifest.digest), described, str(child.result)))
                manifests.append((child.manifest, described, child.result))
        blobs: list[Descriptor] = []
        for manifest, _, _ in manifests:
            if manifest.media_type in INDEX_MEDIA_TYPES:
                continue
            referenced = await self._disk.run(image_blobs, manifest.body)
            # Recorded for manifests stored before ocicache kept this, too.
            await self._metadata.put_manifest_blobs(
                str(manifest.digest), [(str(blob.digest), blob.size) for blob in referenced])
            blobs.extend(blob for blob in referenced if all(blob.digest != seen.digest for seen in blobs))
        return _Closure(top, manifests, blobs)

    async def _fetch_blobs(self, upstream: Upstream, repo: str, blobs: list[Descriptor],
                           report: WarmReport) -> None:
        turns = DeferredSemaphore(CONCURRENT_BLOBS)

        async def one(blob: Descriptor) -> None:
            outcome = await self._fetch_blob(upstream, repo, blob)
            report.blobs.append(outcome)
            self._on_blob(outcome.outcome)

        await gatherResults([turns.run(one, blob) for blob in blobs])

    async def _fetch_blob(self, upstream: Upstream, repo: str, blob: Descriptor) -> BlobOutcome:
        def outcome(name: str, error: str | None = None) -> BlobOutcome:
            return BlobOutcome(str(blob.digest), blob.size, name, error)

        try:
            lookup = await self._blobs.lookup(upstream, repo, blob.digest)
        except Exception as e:
            return outcome("failed", _why(e))
        source = lookup.source
        try:
            if lookup.result is CacheResult.HIT:
                return outcome("cached")
            kept = await _settled(source)
        except Exception as e:
            return outcome("failed", _why(e))
        finally:
            source.release()
        if kept is None:
            return outcome("failed", "fetched but not kept: no room in the store")
        return outcome("fetched")

    # -- pinning

    async def pin(self, upstream: Upstream, repo: str, reference: Digest | str,
                  platforms: Sequence[Platform]) -> WarmReport:
        """
        Pin the closure of C{reference} and fetch it.  Raises
        L{PinRefused}, recording nothing, when the pinned closures would
        not fit in C{max_size} together; the other pins are never touched.
        """
        report = WarmReport(upstream.name, repo, str(reference))
        closure = await self._resolve(upstream, repo, reference, platforms, report)
        key = (upstream.name, repo, str(reference))
        others = await self._metadata.pinned_blobs(excluding=key)
        limit = self._max_size()
        total = sum(others.values()) + sum(blob.size for blob in closure.blobs if str(blob.digest) not in others)
        if limit is not None and total > limit:
            raise PinRefused(
                f"cannot pin {upstream.name}/{repo}:{reference}: the pinned closures would hold {total} bytes,"
                f" over max_size ({limit} bytes); unpin something or raise max_size")
        await self._metadata.put_pin(
            upstream.name, repo, str(reference), ",".join(map(str, platforms)), str(closure.top.digest),
            [str(manifest.digest) for manifest, _, _ in closure.manifests], time.time())
        await self._fetch_blobs(upstream, repo, closure.blobs, report)
        return report

    async def pins(self) -> list[dict[str, Any]]:
        """Every pin, as C{ocicache pins} shows it."""
        return [
            {"upstream": row.upstream, "repo": row.repo, "reference": row.reference,
             "platforms": [text for text in row.platforms.split(",") if text], "digest": row.digest,
             "pinned_at": row.pinned_at, "bytes": row.size}
            for row in await self._metadata.pins()
        ]

    async def unpin(self, upstream: str, repo: str, reference: str) -> bool:
        return await self._metadata.delete_pin(upstream, repo, reference)

    async def follow_pins(self) -> list[WarmReport]:
        """
        Each tag pin whose tag moved (as the manifest service sees it: a
        hit within C{tag_ttl}, else revalidated upstream) is pinned again,
        which takes the new closure and releases the old.  A pin missing
        some of its blobs (a fetch that failed) is fetched again.
        """
        reports = []
        for row in await self._metadata.pins():
            upstream = self._upstreams.get(row.upstream)
            if upstream is None:
                continue  # an upstream no longer configured
            try:
                platforms = [Platform.parse(text) for text in row.platforms.split(",") if text]
                if ":" not in row.reference:  # a tag; a digest never moves
                    found = await self._manifests.lookup(upstream, row.repo, row.reference, MANIFEST_MEDIA_TYPES)
                    if str(found.manifest.digest) != row.digest:
                        log.info("Pin {upstream}/{repo}:{tag} follows its tag from {old} to {new}",
                                 upstream=row.upstream, repo=row.repo, tag=row.reference, old=row.digest,
                                 new=str(found.manifest.digest))
                        reports.append(await self.pin(upstream, row.repo, row.reference, platforms))
                        continue
                if await self._metadata.pin_missing(row.upstream, row.repo, row.reference):
                    reference = Digest.parse(row.reference) if ":" in row.reference else row.reference
                    reports.append(await self.pin(upstream, row.repo, reference, platforms))
            except Exception as e:
                log.warn("Pin {upstream}/{repo}:{tag} could not be followed or completed: {error}",
                         upstream=row.upstream, repo=row.repo, tag=row.reference, error=_why(e))
        return reports


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__


async def _settled(source: Source) -> str | None:
    """
    Wait, as a reader, until a download in flight settles: its committed
    path, or C{None} when it was verified but not kept.  Raises a
    L{DownloadError} saying why it failed.
    """
    settled: Deferred[object] | None = getattr(source, "settled", None)
    if settled is None:
        return None
    done: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        # Leaves the result to the chain (the blob service logs failures).
        done.callback(None)
        return result

    reader = _Drain(source)
    source.subscribe(reader)
    try:
        settled.addBoth(fire)
        await done
    finally:
        source.unsubscribe(reader)
    if source.failure is not None:
        raise DownloadError(source.failure.getErrorMessage())
    path: str | None = getattr(source, "path", None)
    return path
