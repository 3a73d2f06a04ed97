"""
What can go wrong talking to an upstream, as exceptions whose messages are
safe to show: they name the upstream, never the credentials sent to it.
"""

from __future__ import annotations

from attrs import frozen
from twisted.web.iweb import IResponse

__all__ = [
    "UpstreamDenied",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
    "answer_error",
]


class UpstreamError(Exception):
    """The upstream did not give what was asked for."""


class UpstreamUnavailable(UpstreamError):
    """
    The upstream could not be reached, timed out, failed at the protocol
    level, or answered with a server error: worth serving stale for.
    """


@frozen
class UpstreamDenied(UpstreamError):
    """The upstream refused ocicache's credentials (401) or access (403)."""

    message: str
    status: int

    def __str__(self) -> str:
        return self.message


@frozen
class UpstreamRateLimited(UpstreamError):
    """
    The upstream answered 429, or is left alone after one; C{retry_after}
    is the C{Retry-After} to give clients (delta-seconds).
    """

    message: str
    retry_after: bytes | None

    def __str__(self) -> str:
        return self.message


def answer_error(response: IResponse, not_found: Exception) -> Exception:
    """
    The exception for an upstream's non-success answer: C{not_found} for a
    404 (the caller knows what was missing), and an L{UpstreamError} for
    the rest.
    """
    code = response.code
    if code == 404:
        return not_found
    if code == 401:
        return UpstreamDenied("the upstream registry refused ocicache's credentials", 401)
    if code == 403:
        return UpstreamDenied("the upstream registry denied access", 403)
    if code == 429:
        retry_after = response.headers.getRawHeaders(b"retry-after", [None])[0]
        return UpstreamRateLimited("the upstream registry is rate limiting", retry_after)
    return UpstreamUnavailable(f"the upstream registry answered {code}")
