"""
Tag lists (distribution-spec "Listing Tags"), from the upstream: ocicache
never answers with only the tags it happens to hold.
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import frozen

from .._upstream._client import Upstream
from .._upstream._errors import UpstreamUnavailable, answer_error
from ._errors import RepositoryUnknown

__all__ = ["MAX_TAGS_BODY", "TagPage", "TagService"]

MAX_TAGS_BODY = 16 << 20
"""The largest tag list accepted from an upstream."""


@frozen
class TagPage:
    """One page of a tag list, and the upstream's pagination C{Link}."""

    body: bytes
    link: bytes | None


class TagService:
    async def page(self, upstream: Upstream, repo: str, params: Mapping[str, str]) -> TagPage:
        """
        The page C{params} (C{n}, C{last}) asks for.  Raises
        L{RepositoryUnknown} when the upstream has no such repository.
        """
        response = await upstream.tags(repo, params)
        if response.code != 200:
            await upstream.discard(response)
            raise answer_error(response, RepositoryUnknown(f"repository {repo} is not known"))
        body = await upstream.read_body(response, MAX_TAGS_BODY)
        if body is None:
            raise UpstreamUnavailable("the upstream's tag list is too large")
        return TagPage(body, response.headers.getRawHeaders(b"link", [None])[0])
