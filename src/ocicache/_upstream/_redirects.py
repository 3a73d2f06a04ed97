"""
Following an upstream's redirects (RFC 9110 §15.4): registries send blob
downloads to CDNs, file mirrors send clients to other mirrors.

The one rule that matters: C{Authorization} goes only to the origin it
was issued for.  A redirect to another scheme, host or port is followed
without it; one back to the origin gets it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hyperlink import DecodedURL
from twisted.web.iweb import IResponse

from ._errors import UpstreamUnavailable

__all__ = ["MAX_REDIRECTS", "through_redirects"]

MAX_REDIRECTS = 5
"""Redirects followed for one request before giving up."""

# RFC 9110 §15.4.2-§15.4.9: the redirections that carry a Location.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Send = Callable[[DecodedURL, bytes | None], Awaitable[IResponse]]
"""Sends the request again to a URL, with the C{Authorization} value given (or none)."""


def _origin(url: DecodedURL) -> tuple[str, str, int | None]:
    # RFC 6454 §4: scheme, host and port.
    return (url.scheme, url.host, url.port)


async def through_redirects(name: str, url: DecodedURL, response: IResponse, authorization: bytes | None,
                           send: Send, discard: Callable[[IResponse], Awaitable[None]]) -> IResponse:
    """
    The answer at the end of C{response}'s redirects, at most
    L{MAX_REDIRECTS} of them, each redirected body drained by C{discard}.
    Raises L{UpstreamUnavailable} naming upstream C{name} for a bad or
    non-HTTP C{Location} and for too many redirects.
    """
    origin = _origin(url)
    for _ in range(MAX_REDIRECTS):
        location = response.headers.getRawHeaders(b"location", [None])[0]
        if response.code not in _REDIRECTS or location is None:
            return response
        await discard(response)
        try:
            url = url.click(location.decode("ascii"))
        except Exception:
            raise UpstreamUnavailable(f"{name}: bad redirect location") from None
        if url.scheme not in ("http", "https"):
            raise UpstreamUnavailable(f"{name}: redirect to a non-HTTP URL")
        response = await send(url, authorization if _origin(url) == origin else None)
    if response.code in _REDIRECTS and response.headers.hasHeader(b"location"):
        raise UpstreamUnavailable(f"{name}: more than {MAX_REDIRECTS} redirects")
    return response
