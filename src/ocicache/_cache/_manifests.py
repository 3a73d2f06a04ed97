"""
Manifests and tags.

A manifest by digest is immutable: once verified against its digest it is
kept and served without asking anyone.  A tag is a pointer that moves, so
its tag-to-digest mapping is trusted for C{tag_ttl}, then revalidated with
an upstream C{HEAD}: Docker Hub does not count HEADs against its pull rate
limit and does count GETs.  When the upstream is unreachable or failing,
the last known manifest is served (stale-if-error, RFC 5861 §4) with a
warning in the log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence

from attrs import frozen
from twisted.logger import Logger

from .._spec._closure import image_blobs
from .._spec._media_types import MANIFEST_MEDIA_TYPES, manifest_media_type
from .._spec._reference import Digest
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._metadata import MetadataUnavailable
from .._storage._store import Kind
from .._upstream._client import Upstream
from .._upstream._errors import UpstreamRateLimited, UpstreamUnavailable, answer_error
from ._access import RepoAccess
from ._errors import DigestMismatch, ManifestTooLarge, ManifestUnknown
from ._lru import SizedLRU
from ._result import CacheResult
from ._singleflight import SingleFlight
from ._slots import DEFAULT_DOWNLOADS, DEFAULT_QUEUE, Priority, Slots

__all__ = ["MAX_MANIFEST_SIZE", "Manifest", "ManifestService", "variant_key"]

log = Logger()

MAX_MANIFEST_SIZE = 4 << 20
"""distribution-spec "Pushing Manifests": registries accept at least 4 MiB."""


def variant_key(tag: str, accept: Sequence[str]) -> str:
    """
    The key under which the metadata keeps what C{tag} resolves to for a
    client accepting C{accept}: the tag itself for a client that accepts
    every manifest type (nearly every client does), else the tag and the
    sorted types, joined by spaces.  The tag grammar has no space, so no
    variant can be taken for another tag.
    """
    if set(accept) >= set(MANIFEST_MEDIA_TYPES):
        return tag
    return " ".join([tag, *sorted(set(accept))])


HOT_BYTES = 32 << 20
"""Manifest bytes kept in memory, most recently used, so that a hit costs no disk read."""


def _children(body: bytes) -> list[str]:
    """
    The manifests an index or manifest list refers to (image-spec
    image-index.md, C{manifests[].digest}); none for anything else.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    entries = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return []
    found = []
    for entry in entries:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if isinstance(digest, str):
            try:
                found.append(str(Digest.parse(digest)))
            except ValueError:
                continue
    return found


@frozen
class Manifest:
    digest: Digest
    media_type: str
    body: bytes


@frozen
class ManifestLookup:
    """
    A manifest and how it was found.
    """

    manifest: Manifest
    result: CacheResult


class ManifestService:
    def __init__(
        self,
        disk: Disk,
        access: RepoAccess,
        tag_ttl: Callable[[Upstream], float],
        slots: Slots | None = None,
        health: DiskHealth | None = None,
    ) -> None:
        self._disk = disk
        self._reactor = disk.reactor
        self._store = disk.store
        self._metadata = disk.metadata
        self._access = access
        self._tag_ttl = tag_ttl
        self._health = health if health is not None else DiskHealth()
        self._read: dict[str, float] = {}
        # Content-addressed and verified: a copy never goes stale.
        self._hot: SizedLRU[Digest, Manifest] = SizedLRU(HOT_BYTES, lambda m: len(m.body), HOT_BYTES // 8)
        self._slots = slots if slots is not None else Slots(DEFAULT_DOWNLOADS, DEFAULT_QUEUE)
        self._flights: SingleFlight[tuple[str, str, str], Manifest] = SingleFlight()

    async def lookup(
        self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str]
    ) -> ManifestLookup:
        if isinstance(reference, Digest):
            found = await self._by_digest(upstream, repo, reference, accept)
        else:
            found = await self._by_tag(upstream, repo, reference, accept)
        # Batched: the janitor writes them, never one write per request.
        self._read[str(found.manifest.digest)] = self._reactor.seconds()
        return found

    def recent_reads(self, since: float) -> list[str]:
        """The manifests read at or after C{since} and not yet taken by L{take_reads}."""
        return [digest for digest, when in self._read.items() if when >= since]

    def take_reads(self) -> dict[str, float]:
        """The manifests read since the last call, and when."""
        read, self._read = self._read, {}
        return read

    async def _by_digest(
        self, upstream: Upstream, repo: str, digest: Digest, accept: Sequence[str]
    ) -> ManifestLookup:
        stored = await self._stored(digest)
        if stored is not None:
            await self._access.check(upstream, repo, digest, self._prove(upstream, repo, digest))
            return ManifestLookup(stored, CacheResult.HIT)
        manifest, joined = await self._fetch(upstream, repo, digest, accept)
        return ManifestLookup(manifest, CacheResult.COALESCED if joined else CacheResult.MISS)

    async def _by_tag(
        self, upstream: Upstream, repo: str, tag: str, accept: Sequence[str]
    ) -> ManifestLookup:
        # What a tag resolves to depends on what the client accepts
        # (distribution-spec "Pulling manifests"): each Accept set is its
        # own variant, so one client's narrow Accept never replaces what the
        # others get.
        key = variant_key(tag, accept)
        row = await self._metadata.tag(upstream.name, repo, key)
        if row is None and key != tag:
            native = await self._fresh(upstream, repo, tag)
            if native is not None and native.media_type in accept:
                # The upstream answers a narrow Accept with the tag's own
                # manifest whenever that Accept lists its type.
                return ManifestLookup(native, CacheResult.HIT)
        stored = await self._stored(Digest.parse(row.digest)) if row is not None else None
        if row is None or stored is None:
            manifest, joined = await self._fetch(upstream, repo, tag, accept)
            return ManifestLookup(manifest, CacheResult.COALESCED if joined else CacheResult.MISS)
        if self._reactor.seconds() - row.checked_at < self._tag_ttl(upstream):
            return ManifestLookup(stored, CacheResult.HIT)
        try:
            current = await self._revalidate(upstream, repo, tag, accept)
        except (UpstreamUnavailable, UpstreamRateLimited) as e:
            log.warn("Serving stale {upstream}/{repo}:{tag}: {error}",
                     upstream=upstream.name, repo=repo, tag=tag, error=str(e))
            return ManifestLookup(stored, CacheResult.STALE)
        if current == stored.digest:
            try:
                await self._metadata.put_tag(upstream.name, repo, key, str(current), self._reactor.seconds())
            except MetadataUnavailable as e:
                self._health.failed(e)
            return ManifestLookup(stored, CacheResult.HIT)
        manifest, joined = await self._fetch(upstream, repo, tag, accept)
        return ManifestLookup(manifest, CacheResult.COALESCED if joined else CacheResult.MISS)

    async def _fresh(self, upstream: Upstream, repo: str, tag: str) -> Manifest | None:
        """What C{tag} resolves to for every media type, if known and fresh."""
        row = await self._metadata.tag(upstream.name, repo, tag)
        if row is None or self._reactor.seconds() - row.checked_at >= self._tag_ttl(upstream):
            return None
        return await self._stored(Digest.parse(row.digest))

    async def _revalidate(
        self, upstream: Upstream, repo: str, tag: str, accept: Sequence[str]
    ) -> Digest | None:
        """
        The digest the upstream's tag points at now, from a C{HEAD}, or
        C{None} when the upstream did not say.  Raises
        L{UpstreamUnavailable} when the upstream cannot answer, and
        L{UpstreamRateLimited} when it is rate limiting, which the caller
        turns into a stale hit.
        """
        response = await upstream.manifest("HEAD", repo, tag, accept)
        await upstream.discard(response)
        if response.code >= 500:
            raise UpstreamUnavailable(f"{upstream.name} answered {response.code}")
        if response.code == 404:
            try:
                await self._metadata.delete_tag(upstream.name, repo, variant_key(tag, accept))
            except MetadataUnavailable as e:
                self._health.failed(e)
        if response.code != 200:
            raise answer_error(response, ManifestUnknown(f"{repo}:{tag} is not known to {upstream.name}"))
        header = response.headers.getRawHeaders(b"docker-content-digest", [None])[0]
        try:
            return Digest.parse(header.decode("ascii")) if header else None
        except ValueError:
            return None

    async def _fetch(
        self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str]
    ) -> tuple[Manifest, bool]:
        # A digest names one content whatever the Accept; a tag's answer
        # differs by it, so clients with different Accept never share one.
        key = str(reference) if isinstance(reference, Digest) else variant_key(reference, accept)
        flight, joined = self._flights.call(
            (upstream.name, repo, key), lambda: self._download(upstream, repo, reference, accept)
        )
        return await flight, joined

    async def _download(
        self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str]
    ) -> Manifest:
        # Within a download slot, before any blob waiting for one: a pull
        # needs its manifest first.
        slot = await self._slots.acquire(upstream.name, Priority.MANIFEST)
        try:
            return await self._get(upstream, repo, reference, accept)
        finally:
            slot.release()

    async def _get(
        self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str]
    ) -> Manifest:
        response = await upstream.manifest("GET", repo, str(reference), accept)
        if response.code != 200:
            await upstream.discard(response)
            raise answer_error(response, ManifestUnknown(
                f"manifest {repo}:{reference} is not known to {upstream.name}"))
        body = await upstream.read_body(response, MAX_MANIFEST_SIZE)
        if body is None:
            raise ManifestTooLarge(f"the upstream manifest is over {MAX_MANIFEST_SIZE} bytes")
        media_type = manifest_media_type(response.headers.getRawHeaders(b"content-type", [b""])[0], body)
        if not isinstance(reference, Digest) and media_type not in accept:
            # A client gets only a type it listed.  (distribution converts
            # to the deprecated, signed schema 1 when the Accept lists
            # neither a list nor schema 2: never passed on, nor kept.)
            raise ManifestUnknown(f"{repo}:{reference} has no manifest of an accepted media type on {upstream.name}")
        # distribution-spec "Pulling manifests": the digest of a manifest is
        # the digest of its exact bytes.
        if isinstance(reference, Digest):
            digest = reference
            hasher = digest.hasher()
            hasher.update(body)
            if hasher.hexdigest() != digest.encoded:
                raise DigestMismatch(f"the upstream's manifest does not match {digest}")
        else:
            digest = Digest("sha256", hashlib.sha256(body).hexdigest())
            header = response.headers.getRawHeaders(b"docker-content-digest", [None])[0]
            claimed = header.decode("ascii", "replace") if header is not None else None
            if claimed is not None and claimed.startswith("sha256:") and claimed != str(digest):
                raise DigestMismatch("the upstream's manifest does not match its digest header")
        manifest = Manifest(digest, media_type, body)
        self._hot.put(digest, manifest)
        try:
            await self._keep(upstream, repo, reference, accept, manifest)
        except (OSError, MetadataUnavailable) as e:
            # The cache directory is full, read-only or gone: the client is
            # served all the same, and the next one asks the upstream again.
            self._health.failed(e)
        else:
            self._health.works()
        return manifest

    async def _keep(self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str],
                    manifest: Manifest) -> None:
        digest = manifest.digest
        await self._disk.run(self._store.write_small, Kind.MANIFEST, digest, manifest.body)
        now = self._reactor.seconds()
        await self._metadata.put_manifest(str(digest), manifest.media_type, len(manifest.body), now)
        children = await self._disk.run(_children, manifest.body)
        if children:
            await self._metadata.put_children(str(digest), children)
        blobs = await self._disk.run(image_blobs, manifest.body)
        if blobs:
            # What eviction protects for a pull in progress, and what a pin holds.
            await self._metadata.put_manifest_blobs(str(digest), [(str(b.digest), b.size) for b in blobs])
        await self._access.record(upstream, repo, digest)
        if not isinstance(reference, Digest):
            await self._metadata.put_tag(upstream.name, repo, variant_key(reference, accept), str(digest), now)

    def _prove(self, upstream: Upstream, repo: str, digest: Digest) -> Callable[[], Awaitable[None]]:
        async def prove() -> None:
            response = await upstream.manifest("HEAD", repo, str(digest), MANIFEST_MEDIA_TYPES)
            await upstream.discard(response)
            if response.code != 200:
                raise answer_error(response, ManifestUnknown(
                    f"manifest {digest} is not known to {upstream.name}/{repo}"))

        return prove

    async def _stored(self, digest: Digest) -> Manifest | None:
        hot = self._hot.get(digest)
        if hot is not None:
            return hot
        # Up to 4 MiB: read in the disk thread, not on the reactor.
        body = await self._disk.run(self._store.read, Kind.MANIFEST, digest)
        if body is None:
            return None
        media_type = await self._metadata.manifest_media_type(str(digest))
        if media_type is None:
            media_type = manifest_media_type(b"", body)
        manifest = Manifest(digest, media_type, body)
        self._hot.put(digest, manifest)
        return manifest

    def forget(self, digests: list[str]) -> None:
        """Manifests removed from the store (the janitor's expiry)."""
        for digest in digests:
            self._hot.drop(Digest.parse(digest))
