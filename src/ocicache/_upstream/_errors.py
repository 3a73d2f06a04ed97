"""
What can go wrong talking to an upstream, as exceptions whose messages are
safe to show: they name the upstream, never the credentials sent to it.
"""

from __future__ import annotations

from enum import StrEnum

from attrs import frozen
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IResponse

__all__ = [
    "Unavailability",
    "UpstreamDenied",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
    "answer_error",
    "unavailability_of",
]


class UpstreamError(Exception):
    """The upstream did not give what was asked for."""


class Unavailability(StrEnum):
    """
    How an upstream was unavailable: what an upstream's C{stale_on}
    (L{ocicache._ops._config.StalePolicy}) chooses among.
    """

    CONNECT = "connect"
    """No connection: refused, no such host, the connect timed out."""
    TIMEOUT = "timeout"
    """Connected, but the answer or its body did not come in time."""
    SERVER = "5xx"
    """The upstream answered with a server error (RFC 9110 §15.6)."""
    PROTOCOL = "protocol"
    """An answer ocicache cannot use: a bad redirect, a body cut short, another status."""


class UpstreamUnavailable(UpstreamError):
    """
    The upstream could not be reached, timed out, failed at the protocol
    level, or answered with a server error: worth serving stale for.
    C{kind} says which.
    """

    def __init__(self, message: str, kind: Unavailability = Unavailability.PROTOCOL) -> None:
        UpstreamError.__init__(self, message)
        self.kind = kind


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
    kind = Unavailability.SERVER if 500 <= code < 600 else Unavailability.PROTOCOL
    return UpstreamUnavailable(f"the upstream registry answered {code}", kind)


def unavailability_of(error: BaseException) -> Unavailability:
    """
    How a request that got no answer failed: C{error} is what Twisted's
    HTTP client raised.
    """
    # Refused, unreachable, no such host, or the connect timeout
    # (twisted.internet.error.TimeoutError is a ConnectError).
    if isinstance(error, (ConnectError, DNSLookupError)):
        return Unavailability.CONNECT
    # The response timeout cancels the request: while connecting, or once
    # it was sent and no answer came.
    reasons = error.reasons if isinstance(error, ResponseNeverReceived) else []
    if isinstance(error, (CancelledError, ConnectingCancelledError)) or any(
            reason.check(CancelledError) for reason in reasons):
        return Unavailability.TIMEOUT
    return Unavailability.PROTOCOL


_MAX_DESCRIPTION = 200
_CARRYING_REASONS = (RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived)
"""Twisted's client errors that hold their causes as a list of Failures."""


def describe(error: BaseException | Failure) -> str:
    """
    C{error} in words for a log line or a client's error message: the
    reasons of Twisted's client errors (C{ResponseFailed},
    C{ResponseNeverReceived}, ...), whose own C{str} is a list of
    C{Failure} reprs, named by type and message; at most 200 characters.
    """
    if isinstance(error, Failure):
        return _reason(error)
    if isinstance(error, _CARRYING_REASONS):
        text = "; ".join(_reason(reason) for reason in error.reasons) or type(error).__name__
    else:
        text = str(error)
    return text if len(text) < _MAX_DESCRIPTION else text[:_MAX_DESCRIPTION] + "..."


def _reason(reason: object) -> str:
    if isinstance(reason, Failure) and reason.value is not None:
        return f"{type(reason.value).__name__}: {describe(reason.value)}"
    return type(reason).__name__
