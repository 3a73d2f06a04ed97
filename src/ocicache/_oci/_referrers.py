"""
Referrers listings (distribution-spec "Listing Referrers"): the
signatures, SBOMs and attestations whose C{subject} is a manifest.

A listing is the upstream's, passed through: fetched once for every
client that asks at the same time (singleflight), reused for
C{referrers_ttl}, and served stale when the upstream fails.  Memory is
bounded: listings are kept least recently used first, up to a byte budget.

An upstream without the referrers API (it answers the endpoint C{404}, or
with something that is not an image index) is answered from the fallback
tag its clients maintain instead ("Unavailable Referrers API",
"Referrers Tag Schema"), fetched through the manifest service, so it is
cached and revalidated like any tag.  ocicache then applies the
C{artifactType} filter itself.  No referrers at all is an empty index,
never a 404.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from .._fetch._lru import SizedLRU
from .._fetch._result import CacheResult
from .._fetch._singleflight import SingleFlight
from .._spec._media_types import MANIFEST_MEDIA_TYPES
from .._spec._reference import Digest
from .._spec._referrers import (
    ARTIFACT_TYPE_FILTER,
    IMAGE_INDEX,
    InvalidIndex,
    empty_index,
    filter_index,
    referrers_tag,
)
from .._storage._disk import Disk
from .._upstream._client import Upstream
from .._upstream._errors import UpstreamRateLimited, UpstreamUnavailable, answer_error
from ._errors import ManifestUnknown, RepositoryUnknown
from ._manifests import MAX_MANIFEST_SIZE, ManifestService

__all__ = ["ReferrerService", "ReferrersLookup", "ReferrersPage"]

log = Logger()

MAX_STALE = 24 * 3600.0
"""Seconds past which a listing is not served stale when the upstream fails."""

CACHE_BYTES = 16 << 20
"""The most bytes of listings kept in memory."""

MAX_BODY = MAX_MANIFEST_SIZE
"""The largest listing accepted from an upstream: an index, so a manifest's bound."""

_Params = tuple[tuple[str, str], ...]
_Key = tuple[str, str, str, _Params]


@frozen
class ReferrersPage:
    """
    One page of a listing: the image index, the upstream's pagination
    C{Link}, and whether C{artifactType} filtering was applied (the
    C{OCI-Filters-Applied} header).
    """

    body: bytes
    link: bytes | None
    filtered: bool


@frozen
class ReferrersLookup:
    page: ReferrersPage
    result: CacheResult


@frozen
class _Kept:
    page: ReferrersPage
    fetched_at: float


class ReferrerService:
    def __init__(self, clock: IReactorTime, manifests: ManifestService, ttl: float,
                 disk: Disk | None = None, max_stale: float = MAX_STALE, max_bytes: int = CACHE_BYTES) -> None:
        """
        @param ttl: how long a listing is reused: C{[cache] referrers_ttl},
            short, since a signature may be pushed any moment.
        @param disk: where indexes are parsed and filtered, off the reactor;
            C{None} parses them in place (tests).
        """
        self._clock = clock
        self._manifests = manifests
        self._ttl = ttl
        self._disk = disk
        self._max_stale = max_stale
        self._flights: SingleFlight[_Key, ReferrersPage] = SingleFlight()
        self._kept: SizedLRU[_Key, _Kept] = SizedLRU(max_bytes, lambda kept: len(kept.page.body))

    async def page(self, upstream: Upstream, repo: str, subject: Digest, params: _Params) -> ReferrersLookup:
        """
        The referrers of C{subject} in C{repo}, for the validated query
        C{params} (C{artifactType}, C{n}, C{last}).
        """
        key: _Key = (upstream.name, repo, str(subject), params)
        kept = self._kept.get(key)
        now = self._clock.seconds()
        if kept is not None and now - kept.fetched_at < self._ttl:
            return ReferrersLookup(kept.page, CacheResult.HIT)
        flight, joined = self._flights.call(key, lambda: self._fetch(upstream, repo, subject, params, key))
        try:
            page = await flight
        except (UpstreamUnavailable, UpstreamRateLimited) as e:
            # RFC 5861 §4, stale-if-error: the last listing we had beats none.
            kept = self._kept.get(key)
            if kept is None or now - kept.fetched_at > self._max_stale:
                raise
            log.warn("Serving stale referrers of {upstream}/{repo}@{subject}: {error}",
                     upstream=upstream.name, repo=repo, subject=str(subject), error=str(e))
            return ReferrersLookup(kept.page, CacheResult.STALE)
        return ReferrersLookup(page, CacheResult.COALESCED if joined else CacheResult.MISS)

    async def _fetch(self, upstream: Upstream, repo: str, subject: Digest, params: _Params,
                     key: _Key) -> ReferrersPage:
        artifact_type = dict(params).get(ARTIFACT_TYPE_FILTER)
        response = await upstream.referrers(repo, str(subject), params)
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0].split(b";")[0].strip()
        if response.code == 404 or (response.code == 200 and content_type != IMAGE_INDEX.encode("ascii")):
            # "Unavailable Referrers API": a registry with the API never
            # answers 404 to it; one answering anything but an index has
            # none either.
            await upstream.discard(response)
            page = await self._fallback(upstream, repo, subject, artifact_type)
        elif response.code != 200:
            await upstream.discard(response)
            raise answer_error(response, RepositoryUnknown(f"repository {repo} is not known"))
        else:
            page = await self._passed(upstream, response, artifact_type)
        self._kept.put(key, _Kept(page, self._clock.seconds()))
        return page

    async def _passed(self, upstream: Upstream, response: IResponse, artifact_type: str | None) -> ReferrersPage:
        """The upstream's own listing, filtered here if it was asked to and did not."""
        body = await upstream.read_body(response, MAX_BODY)
        if body is None:
            raise UpstreamUnavailable("the upstream's referrers listing is too large")
        link = response.headers.getRawHeaders(b"link", [None])[0]
        applied = b",".join(response.headers.getRawHeaders(b"oci-filters-applied", []))
        filtered = ARTIFACT_TYPE_FILTER.encode("ascii") in {item.strip() for item in applied.split(b",")}
        if artifact_type is None:
            # Nothing was asked to be filtered: nothing is said to be.
            return ReferrersPage(body, link, False)
        if filtered:
            return ReferrersPage(body, link, True)
        try:
            # The spec lets a registry ignore the filter; clients are
            # served the same either way.
            body = await self._filter(body, artifact_type)
        except InvalidIndex:
            raise UpstreamUnavailable("the upstream's referrers listing is not an image index") from None
        return ReferrersPage(body, link, True)

    async def _fallback(self, upstream: Upstream, repo: str, subject: Digest,
                        artifact_type: str | None) -> ReferrersPage:
        """
        The listing from the Referrers Tag Schema's tag, which clients of a
        registry without the API keep as "an image index matching the
        expected response of the referrers API".
        """
        filtered = artifact_type is not None
        try:
            found = await self._manifests.lookup(upstream, repo, referrers_tag(subject), MANIFEST_MEDIA_TYPES)
        except ManifestUnknown:
            return ReferrersPage(empty_index(), None, filtered)
        manifest = found.manifest
        if manifest.media_type != IMAGE_INDEX:
            # "If ... the tag schema does not return a valid image index,
            # the client SHOULD assume there are no referrers."
            return ReferrersPage(empty_index(), None, filtered)
        try:
            body = await self._filter(manifest.body, artifact_type)
        except InvalidIndex:
            return ReferrersPage(empty_index(), None, filtered)
        return ReferrersPage(body, None, filtered)

    async def _filter(self, body: bytes, artifact_type: str | None) -> bytes:
        # Up to 4 MiB of JSON: parsed in the disk thread, not on the reactor.
        if self._disk is None:
            return filter_index(body, artifact_type)
        return await self._disk.run(filter_index, body, artifact_type)
