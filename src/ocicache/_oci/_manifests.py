"""
Manifests and tags.

A manifest by digest is immutable: once verified against its digest it is
kept and served without asking anyone.  A tag is a pointer that moves, so
its tag-to-digest mapping is trusted for C{tag_ttl}, then revalidated with
an upstream C{HEAD}: Docker Hub does not count HEADs against its pull rate
limit and does count GETs.  However many clients ask for an expired tag at
once, one C{HEAD} revalidates it (and one C{GET} fetches it, if it moved).
When the upstream fails, the last known manifest is served stale
(stale-if-error, RFC 5861 §4) as the upstream's L{StalePolicy} allows,
with a warning in the log.  An upstream 404 is remembered for a while
(L{NegativeCache}), so a client asking for a missing tag or digest in a
loop costs one upstream request per negative TTL.

In a fleet (L{SharedManifests}), a node whose tag is not fresh first asks
what another node found: a digest checked against the upstream within
C{tag_ttl} spares it the C{HEAD}, and the manifest's shared bytes (checked
against the digest) spare it the C{GET}.  Each upstream answer is shared,
and while one node asks the upstream about a tag or digest, the others
asked for it meanwhile wait for its answer (up to L{TURN_WAIT}) rather
than asking too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from attrs import frozen
from twisted.logger import Logger

from .._fetch._lru import SizedLRU
from .._fetch._negative import NegativeCache, NegativeKey
from .._fetch._result import CacheResult
from .._fetch._singleflight import SingleFlight
from .._fetch._slots import DEFAULT_DOWNLOADS, DEFAULT_QUEUE, Priority, Slots
from .._spec._closure import image_blobs
from .._spec._media_types import MANIFEST_MEDIA_TYPES, manifest_media_type
from .._spec._reference import Digest
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._metadata import MetadataUnavailable
from .._storage._store import Kind
from .._upstream._client import Upstream
from .._upstream._errors import UpstreamError, answer_error
from ._access import RepoAccess
from ._errors import DigestMismatch, ManifestTooLarge, ManifestUnknown
from ._manifest_fleet import FleetManifests, SharedManifests, SharedTag, no_turn
from ._stale import serves_stale

__all__ = ["MAX_MANIFEST_SIZE", "Manifest", "ManifestService", "SharedManifests", "SharedTag", "no_turn", "variant_key"]

log = Logger()

T = TypeVar("T")

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

CONFIRMED_ENTRIES = 4096
"""Tag revalidations remembered in memory, most recent first."""


def _reference_key(reference: Digest | str, accept: Sequence[str]) -> str:
    """
    What a fetch of C{reference} is keyed by (its flight, its turn, its
    negative entry): a digest names one content whatever the Accept; a
    tag's answer differs by it (L{variant_key}).
    """
    return str(reference) if isinstance(reference, Digest) else variant_key(reference, accept)


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


def _negative_key(upstream: Upstream, repo: str, key: str) -> NegativeKey:
    """Where a manifest 404 is remembered: C{key} is a digest or a tag's L{variant_key}."""
    return (upstream.name, repo, "manifest", key)


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
        negative: NegativeCache | None = None,
        shared: SharedManifests | None = None,
        on_stored: Callable[[str, int], None] = lambda digest, size: None,
    ) -> None:
        """
        @param on_stored: told of each manifest written to the store, with
            its size (the store's tally of manifests).
        """
        self._on_stored = on_stored
        self._disk = disk
        self._fleet = FleetManifests(shared, disk.reactor, tag_ttl, MAX_MANIFEST_SIZE)
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
        # Each flight says whether its manifest came from the upstream.
        self._flights: SingleFlight[tuple[str, str, str], tuple[Manifest, bool]] = SingleFlight()
        self._revalidations: SingleFlight[tuple[str, str, str], Digest | None] = SingleFlight()
        # What each revalidation just confirmed, set as its flight lands:
        # a client that read the tag's row before then finds it here
        # rather than starting another HEAD.
        self._confirmed: SizedLRU[tuple[str, str, str], tuple[Digest, float]] = SizedLRU(
            CONFIRMED_ENTRIES, lambda confirmed: 1)
        self._negative = negative if negative is not None else NegativeCache(self._reactor)

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
        manifest, result = await self._fetch(upstream, repo, digest, accept)
        return ManifestLookup(manifest, result)

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
            manifest, result = await self._fetch(upstream, repo, tag, accept)
            return ManifestLookup(manifest, result)
        age = self._reactor.seconds() - row.checked_at
        if age < self._tag_ttl(upstream):
            return ManifestLookup(stored, CacheResult.HIT)
        try:
            current = await self._revalidated(upstream, repo, tag, accept, stored)
        except (UpstreamError, ManifestUnknown) as e:
            return self._stale(upstream, repo, tag, stored, e, age)
        if current == stored.digest:
            return ManifestLookup(stored, CacheResult.HIT)
        # The tag moved: its new manifest, or the old one if that fails.
        try:
            manifest, result = await self._fetch(upstream, repo, tag, accept)
        except (UpstreamError, ManifestUnknown) as e:
            return self._stale(upstream, repo, tag, stored, e, age)
        return ManifestLookup(manifest, result)

    def _stale(self, upstream: Upstream, repo: str, tag: str, stored: Manifest, error: Exception,
               age: float) -> ManifestLookup:
        """
        C{stored}, the last known manifest of C{tag}, if the upstream's
        stale policy allows serving it after C{error}; else C{error}.
        """
        if not serves_stale(upstream.config.stale, error, age):
            raise error
        log.warn("Serving stale {upstream}/{repo}:{tag}: {error}",
                 upstream=upstream.name, repo=repo, tag=tag, error=str(error))
        return ManifestLookup(stored, CacheResult.STALE)

    async def _fresh(self, upstream: Upstream, repo: str, tag: str) -> Manifest | None:
        """What C{tag} resolves to for every media type, if known and fresh."""
        row = await self._metadata.tag(upstream.name, repo, tag)
        if row is None or self._reactor.seconds() - row.checked_at >= self._tag_ttl(upstream):
            return None
        return await self._stored(Digest.parse(row.digest))

    async def _revalidated(
        self, upstream: Upstream, repo: str, tag: str, accept: Sequence[str], known: Manifest
    ) -> Digest | None:
        """
        The digest the upstream's tag points at now, or C{None} when the
        upstream did not say: one C{HEAD} for every client asking at once
        (per upstream, repository, tag and C{Accept} variant).  Raises
        L{ManifestUnknown} when the upstream has no such tag, and an
        L{UpstreamError} when it cannot answer.
        """
        key = variant_key(tag, accept)
        await self._negative.check(_negative_key(upstream, repo, key))
        flight_key = (upstream.name, repo, key)
        confirmed = self._confirmed.get(flight_key)
        if confirmed is not None and self._reactor.seconds() - confirmed[1] < self._tag_ttl(upstream):
            return confirmed[0]
        flight, _ = self._revalidations.call(
            flight_key, lambda: self._revalidate(upstream, repo, tag, accept, known))
        return await flight

    async def _revalidate(
        self, upstream: Upstream, repo: str, tag: str, accept: Sequence[str], known: Manifest
    ) -> Digest | None:
        key = variant_key(tag, accept)
        shared = await self._fleet.tag(upstream, repo, key)
        end = no_turn
        if shared is None:
            shared, end = await self._fleet.turn(upstream, repo, key, lambda: self._fleet.tag(upstream, repo, key))
        if shared is not None:
            # Another node of the fleet asked the upstream lately.
            if shared.digest == known.digest:
                await self._put_tag(upstream, repo, key, known.digest, shared.checked_at)
            self._confirmed.put((upstream.name, repo, key), (shared.digest, shared.checked_at))
            return shared.digest
        try:
            return await self._head(upstream, repo, tag, accept, known)
        finally:
            end()

    async def _head(
        self, upstream: Upstream, repo: str, tag: str, accept: Sequence[str], known: Manifest
    ) -> Digest | None:
        key = variant_key(tag, accept)
        response = await upstream.manifest("HEAD", repo, tag, accept)
        await upstream.discard(response)
        if response.code != 200:
            # answer_error: a 429 is UpstreamRateLimited with its
            # Retry-After, a 5xx UpstreamUnavailable, 401 and 403 denied.
            missing = ManifestUnknown(f"{repo}:{tag} is not known to {upstream.name}")
            if response.code == 404:
                self._negative.remember(_negative_key(upstream, repo, key), missing, by_digest=False)
                if upstream.config.stale.on_404 == "forget":
                    try:
                        await self._metadata.delete_tag(upstream.name, repo, key)
                    except MetadataUnavailable as e:
                        self._health.failed(e)
            raise answer_error(response, missing)
        header = response.headers.getRawHeaders(b"docker-content-digest", [None])[0]
        try:
            current = Digest.parse(header.decode("ascii")) if header else None
        except ValueError:
            return None
        now = self._reactor.seconds()
        if current == known.digest:
            await self._put_tag(upstream, repo, key, current, now)
            self._fleet.share(upstream, repo, key, known.digest, known.media_type, known.body, now)
        if current is not None:
            self._confirmed.put((upstream.name, repo, key), (current, now))
        return current

    async def _put_tag(self, upstream: Upstream, repo: str, key: str, digest: Digest, checked_at: float) -> None:
        """Note that C{key} was found to resolve to C{digest} at C{checked_at}."""
        try:
            await self._metadata.put_tag(upstream.name, repo, key, str(digest), checked_at)
        except MetadataUnavailable as e:
            self._health.failed(e)

    async def _shared_manifest(self, digest: Digest) -> Manifest | None:
        """The manifest C{digest} from this node's store, else from the fleet's verified shared bytes."""
        stored = await self._stored(digest)
        if stored is not None:
            return stored
        shared = await self._fleet.manifest(digest)
        if shared is None:
            return None
        media_type, body = shared
        # Read as the upstream's Content-Type is: the type, without parameters.
        return Manifest(digest, manifest_media_type(media_type.encode("ascii", "replace"), body), body)

    async def _from_fleet(
        self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str]
    ) -> Manifest | None:
        """
        C{reference}'s manifest as the fleet knows it, kept here too, or
        C{None} when the upstream must be asked.  A tag: what a node
        checked within C{tag_ttl}, for this Accept variant (or the tag's
        own manifest, if this Accept lists its type).  A digest:
        its shared bytes, once this repository is shown to hold it.
        """
        if self._fleet.alone:
            return None
        if isinstance(reference, Digest):
            manifest = await self._shared_manifest(reference)
            if manifest is None:
                return None
            await self._access.check(upstream, repo, reference, self._prove(upstream, repo, reference))
            checked_at = None
        else:
            key = variant_key(reference, accept)
            shared = await self._fleet.tag(upstream, repo, key)
            if shared is None and key != reference:
                # As in _by_tag: the tag's own manifest answers a narrow
                # Accept that lists its type.
                shared = await self._fleet.tag(upstream, repo, reference)
            if shared is None or shared.media_type not in accept:
                return None
            manifest = await self._shared_manifest(shared.digest)
            if manifest is None or manifest.media_type not in accept:
                return None
            checked_at = shared.checked_at
        self._hot.put(manifest.digest, manifest)
        await self._kept(upstream, repo, reference, accept, manifest, checked_at)
        return manifest

    async def _fetch(
        self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str]
    ) -> tuple[Manifest, CacheResult]:
        # Clients with different Accept never share a tag's flight.
        key = _reference_key(reference, accept)
        await self._negative.check(_negative_key(upstream, repo, key))
        flight, joined = self._flights.call(
            (upstream.name, repo, key), lambda: self._download(upstream, repo, reference, accept)
        )
        manifest, from_upstream = await flight
        if not from_upstream:
            return manifest, CacheResult.HIT  # the fleet's: a pull saved
        return manifest, CacheResult.COALESCED if joined else CacheResult.MISS

    async def _download(
        self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str]
    ) -> tuple[Manifest, bool]:
        found = await self._from_fleet(upstream, repo, reference, accept)
        if found is not None:
            return found, False
        key = _reference_key(reference, accept)
        found, end = await self._fleet.turn(upstream, repo, key,
                                      lambda: self._from_fleet(upstream, repo, reference, accept))
        if found is not None:
            return found, False
        try:
            # Within a download slot, before any blob waiting for one: a
            # pull needs its manifest first.
            slot = await self._slots.acquire(upstream.name, Priority.MANIFEST)
            try:
                return await self._get(upstream, repo, reference, accept), True
            finally:
                slot.release()
        finally:
            end()

    async def _get(
        self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str]
    ) -> Manifest:
        response = await upstream.manifest("GET", repo, str(reference), accept)
        if response.code != 200:
            await upstream.discard(response)
            missing = ManifestUnknown(f"manifest {repo}:{reference} is not known to {upstream.name}")
            if response.code == 404:
                key = _reference_key(reference, accept)
                self._negative.remember(_negative_key(upstream, repo, key), missing,
                                        by_digest=isinstance(reference, Digest))
            raise answer_error(response, missing)
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
            if not digest.names(body):
                raise DigestMismatch(f"the upstream's manifest does not match {digest}")
        else:
            digest = Digest("sha256", hashlib.sha256(body).hexdigest())
            header = response.headers.getRawHeaders(b"docker-content-digest", [None])[0]
            claimed = header.decode("ascii", "replace") if header is not None else None
            if claimed is not None and claimed.startswith("sha256:") and claimed != str(digest):
                raise DigestMismatch("the upstream's manifest does not match its digest header")
        manifest = Manifest(digest, media_type, body)
        self._hot.put(digest, manifest)
        now = self._reactor.seconds()
        self._fleet.share(upstream, repo, None if isinstance(reference, Digest) else variant_key(reference, accept),
                          digest, media_type, body, now)
        await self._kept(upstream, repo, reference, accept, manifest, now)
        return manifest

    async def _kept(self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str],
                    manifest: Manifest, checked_at: float | None) -> None:
        """L{_keep}, a failing cache directory noted rather than raised."""
        try:
            await self._keep(upstream, repo, reference, accept, manifest, checked_at)
        except (OSError, MetadataUnavailable) as e:
            # The cache directory is full, read-only or gone: the client is
            # served all the same, and the next one asks the upstream again.
            self._health.failed(e)
        else:
            self._health.works()

    async def _keep(self, upstream: Upstream, repo: str, reference: Digest | str, accept: Sequence[str],
                    manifest: Manifest, checked_at: float | None) -> None:
        """
        Store C{manifest} and what refers to it; a tag's row says it was
        checked against the upstream at C{checked_at}.
        """
        digest = manifest.digest
        await self._disk.run(self._store.write_small, Kind.MANIFEST, digest, manifest.body)
        self._on_stored(str(digest), len(manifest.body))
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
            await self._metadata.put_tag(upstream.name, repo, variant_key(reference, accept), str(digest),
                                         now if checked_at is None else checked_at)

    def _prove(self, upstream: Upstream, repo: str, digest: Digest) -> Callable[[], Awaitable[None]]:
        async def prove() -> None:
            key = _negative_key(upstream, repo, str(digest))
            await self._negative.check(key)
            response = await upstream.manifest("HEAD", repo, str(digest), MANIFEST_MEDIA_TYPES)
            await upstream.discard(response)
            if response.code != 200:
                missing = ManifestUnknown(f"manifest {digest} is not known to {upstream.name}/{repo}")
                if response.code == 404:
                    self._negative.remember(key, missing, by_digest=True)
                raise answer_error(response, missing)

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
