"""
Tag lists (distribution-spec "Listing Tags"), always the upstream's: ocicache
never answers with only the tags it happens to hold.

A page is fetched once for every client that asks at the same time
(singleflight), reused for the upstream's C{tag_ttl}, and served stale when the upstream
fails, as its L{StalePolicy} allows, so a build farm's tag listings cost one upstream
request per page per TTL and survive an outage.  A repository the upstream
does not have is remembered for C{negative_ttl} (L{NegativeCache}).  Memory
is bounded: pages are kept least recently used first, up to a byte budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .._fetch._lru import SizedLRU
from .._fetch._negative import NegativeCache, NegativeKey
from .._fetch._result import CacheResult
from .._fetch._singleflight import SingleFlight
from .._upstream._client import Upstream
from .._upstream._errors import UpstreamError, UpstreamUnavailable, answer_error
from ._errors import RepositoryUnknown
from ._stale import serves_stale

__all__ = ["MAX_TAGS_BODY", "TagLookup", "TagPage", "TagService"]

log = Logger()

MAX_TAGS_BODY = 16 << 20
"""The largest tag list accepted from an upstream."""

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
    def __init__(self, clock: IReactorTime, ttl: Callable[[Upstream], float], max_bytes: int = CACHE_BYTES,
                 negative: NegativeCache | None = None) -> None:
        """
        @param ttl: how long an upstream's pages are reused: its
            C{tag_ttl}, the same trust as in its tags' digests.
        """
        self._clock = clock
        self._ttl = ttl
        self._negative = negative if negative is not None else NegativeCache(clock)
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
        try:
            await self._negative.check(_negative_key(upstream, repo, params))
            flight, joined = self._flights.call(key, lambda: self._fetch(upstream, repo, params, key))
            page = await flight
        except (UpstreamError, RepositoryUnknown) as e:
            # RFC 5861 §4, stale-if-error: the last page we had beats none,
            # as the upstream's stale policy allows.
            kept = self._kept.get(key)
            if kept is None or not serves_stale(upstream.config.stale, e, now - kept.fetched_at):
                if isinstance(e, RepositoryUnknown):
                    self._kept.drop(key)
                raise
            log.warn("Serving a stale tag list of {upstream}/{repo}: {error}",
                     upstream=upstream.name, repo=repo, error=str(e))
            return TagLookup(kept.page, CacheResult.STALE)
        return TagLookup(page, CacheResult.COALESCED if joined else CacheResult.MISS)

    async def _fetch(self, upstream: Upstream, repo: str, params: Mapping[str, str], key: _Key) -> TagPage:
        response = await upstream.tags(repo, params)
        if response.code != 200:
            await upstream.discard(response)
            missing = RepositoryUnknown(f"repository {repo} is not known")
            if response.code == 404:
                self._negative.remember(_negative_key(upstream, repo, params), missing, by_digest=False)
            raise answer_error(response, missing)
        body = await upstream.read_body(response, MAX_TAGS_BODY)
        if body is None:
            raise UpstreamUnavailable("the upstream's tag list is too large")
        page = TagPage(body, response.headers.getRawHeaders(b"link", [None])[0])
        self._kept.put(key, _Kept(page, self._clock.seconds()))
        return page


def _negative_key(upstream: Upstream, repo: str, params: Mapping[str, str]) -> NegativeKey:
    # The parameters passed the spec's grammar (an integer, a tag): no "&" or "=".
    return (upstream.name, repo, "tags", "&".join(f"{name}={value}" for name, value in sorted(params.items())))
