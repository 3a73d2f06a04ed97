"""
Tag lists (distribution-spec "Listing Tags"), always the upstream's: ocicache
never answers with only the tags it happens to hold.

A page is fetched once for every client that asks at the same time
(singleflight), reused for the upstream's C{tag_ttl}, and served stale when the upstream
fails, so a build farm's tag listings cost one upstream request per page
per TTL and survive an outage.  Memory is bounded: pages are kept least
recently used first, up to a byte budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .._upstream._client import Upstream
from .._upstream._errors import UpstreamRateLimited, UpstreamUnavailable, answer_error
from ._errors import RepositoryUnknown
from ._lru import SizedLRU
from ._result import CacheResult
from ._singleflight import SingleFlight

__all__ = ["MAX_TAGS_BODY", "TagLookup", "TagPage", "TagService"]

log = Logger()

MAX_TAGS_BODY = 16 << 20
"""The largest tag list accepted from an upstream."""

MAX_STALE = 24 * 3600.0
"""Seconds past which a page is not served stale when the upstream fails."""

CACHE_BYTES = 64 << 20
"""The most bytes of tag lists kept in memory."""

_Key = tuple[str, str, tuple[tuple[str, str], ...]]


@frozen
class TagPage:
    """One page of a tag list, and the upstream's pagination C{Link}."""

    body: bytes
    link: bytes | None


@frozen
class TagLookup:
    page: TagPage
    result: CacheResult


@frozen
class _Kept:
    page: TagPage
    fetched_at: float


class TagService:
    def __init__(self, clock: IReactorTime, ttl: Callable[[Upstream], float], max_stale: float = MAX_STALE,
                 max_bytes: int = CACHE_BYTES) -> None:
        """
        @param ttl: how long an upstream's pages are reused: its
            C{tag_ttl}, the same trust as in its tags' digests.
        """
        self._clock = clock
        self._ttl = ttl
        self._max_stale = max_stale
        self._flights: SingleFlight[_Key, TagPage] = SingleFlight()
        self._kept: SizedLRU[_Key, _Kept] = SizedLRU(max_bytes, lambda kept: len(kept.page.body))

    async def page(self, upstream: Upstream, repo: str, params: Mapping[str, str]) -> TagLookup:
        """
        The page C{params} (C{n}, C{last}) asks for.  Raises
        L{RepositoryUnknown} when the upstream has no such repository.
        """
        key: _Key = (upstream.name, repo, tuple(sorted(params.items())))
        kept = self._kept.get(key)
        now = self._clock.seconds()
        if kept is not None and now - kept.fetched_at < self._ttl(upstream):
            return TagLookup(kept.page, CacheResult.HIT)
        flight, joined = self._flights.call(key, lambda: self._fetch(upstream, repo, params, key))
        try:
            page = await flight
        except (UpstreamUnavailable, UpstreamRateLimited) as e:
            # RFC 5861 §4, stale-if-error: the last page we had beats none.
            kept = self._kept.get(key)
            if kept is None or now - kept.fetched_at > self._max_stale:
                raise
            log.warn("Serving a stale tag list of {upstream}/{repo}: {error}",
                     upstream=upstream.name, repo=repo, error=str(e))
            return TagLookup(kept.page, CacheResult.STALE)
        return TagLookup(page, CacheResult.COALESCED if joined else CacheResult.MISS)

    async def _fetch(self, upstream: Upstream, repo: str, params: Mapping[str, str], key: _Key) -> TagPage:
        response = await upstream.tags(repo, params)
        if response.code != 200:
            await upstream.discard(response)
            raise answer_error(response, RepositoryUnknown(f"repository {repo} is not known"))
        body = await upstream.read_body(response, MAX_TAGS_BODY)
        if body is None:
            raise UpstreamUnavailable("the upstream's tag list is too large")
        page = TagPage(body, response.headers.getRawHeaders(b"link", [None])[0])
        self._kept.put(key, _Kept(page, self._clock.seconds()))
        return page
