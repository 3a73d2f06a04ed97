"""
The one place where what went wrong becomes what a client is told: domain
errors of the cache and the upstream client are mapped to
distribution-spec errors (code, HTTP status, JSON body).
"""

from __future__ import annotations

import re

from attrs import evolve, frozen
from twisted.web.iweb import IRequest

from .._fetch._errors import CacheError
from .._fetch._slots import Busy
from .._identity._errors import Denied, Unauthenticated
from .._policy import AccessDenied
from .._spec._auth import Challenge, format_challenge
from .._spec._errors import ErrorCode, RegistryError
from .._upstream._errors import UpstreamDenied, UpstreamRateLimited, UpstreamUnavailable

__all__ = [
    "DEFAULT_RETRY_AFTER", "PlainAnswer", "challenged", "internal_error", "plain_answer", "read_only_error",
    "registry_error", "render_error", "with_challenge",
]

_INTERNAL = RegistryError(ErrorCode.UNKNOWN, "internal error")

DEFAULT_RETRY_AFTER = b"10"
"""Seconds a 429 asks a client to wait when its cause named no time."""

# RFC 9110 §10.2.3: Retry-After = HTTP-date / delay-seconds.  An upstream's
# value is passed on only when it is one of them (IMF-fixdate, the form
# senders must generate, RFC 9110 §5.6.7).
_RETRY_AFTER = re.compile(
    rb"[0-9]{1,10}"
    rb"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def registry_error(error: BaseException) -> RegistryError | None:
    """
    The registry error to answer C{error} with, or C{None} when it is not
    one we expect (a bug: the caller logs it and answers 500).
    """
    match error:
        case RegistryError():
            return error
        # distribution-spec "Error Codes": 401 UNAUTHORIZED, 403 DENIED.
        case Unauthenticated():
            return RegistryError(ErrorCode.UNAUTHORIZED, str(error))
        case AccessDenied() | Denied():
            # The mirror's own policy (docs/sharing.md, "Who may pull what"), or
            # credentials that prove an identity this request may not use.
            return RegistryError(ErrorCode.DENIED, str(error))
        case UpstreamDenied(status=401):
            return RegistryError(ErrorCode.UNAUTHORIZED, str(error))
        case UpstreamDenied():
            return RegistryError(ErrorCode.DENIED, str(error))
        case UpstreamRateLimited(retry_after=retry_after):
            # The upstream's own wait, when it gave a well-formed one;
            # render_error supplies the default otherwise.
            headers = ((b"retry-after", retry_after.strip()),) if retry_after is not None else ()
            return RegistryError(ErrorCode.TOOMANYREQUESTS, str(error), headers=headers)
        case Busy(retry_after=seconds):
            # Bounded work (RFC 6585 §4): come back later.
            return RegistryError(ErrorCode.TOOMANYREQUESTS, str(error),
                                 headers=((b"retry-after", b"%d" % seconds),))
        # The upstream's fault, never a 500 of ours: 502 Bad Gateway
        # (RFC 9110 §15.6.3).
        case UpstreamUnavailable():
            return RegistryError(ErrorCode.UPSTREAM_UNAVAILABLE, str(error), status=502)
        # Every front-end's domain errors say which registry error they are.
        case CacheError(code=code, status=status):
            return RegistryError(code, str(error), status=status, headers=error.headers())
    return None


def challenged(error: Unauthenticated, challenge: Challenge) -> RegistryError:
    """
    The 401 for C{error}, with the C{WWW-Authenticate} challenge that
    tells the client how to authenticate (RFC 9110 §15.5.2: a 401 must
    carry one).
    """
    answer = registry_error(error)
    if answer is None:
        raise TypeError("not an authentication error")
    return with_challenge(answer, challenge)


def with_challenge(error: RegistryError, challenge: Challenge) -> RegistryError:
    """
    C{error}, a 401, with C{challenge} unless it already carries one: every
    401 must say how to authenticate (RFC 9110 §15.5.2), the upstream's
    refusal of our credentials too.  (The upstream's own challenge names
    the upstream's realm, useless to our client: ours is sent instead.)
    """
    if any(name.lower() == b"www-authenticate" for name, _ in error.headers):
        return error
    return evolve(error, headers=(*error.headers, (b"www-authenticate", format_challenge(challenge))))


def read_only_error() -> RegistryError:
    """What a method other than GET and HEAD gets: ocicache is a read-only mirror."""
    return RegistryError(
        ErrorCode.UNSUPPORTED,
        "ocicache is a read-only mirror: push and delete are not supported",
        headers=((b"allow", b"GET, HEAD"),),
    )


def internal_error() -> RegistryError:
    """What a client is told about a bug: nothing of its details."""
    return _INTERNAL


def render_error(request: IRequest, error: RegistryError) -> bytes:
    """
    Set the status and headers for C{error} on C{request} and return the
    body, which a HEAD request must not send (RFC 9110 §9.3.2), but whose
    length it still announces.
    """
    body = error.body()
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    limited = error.status == 429
    for name, value in error.headers:
        if not (limited and name.lower() == b"retry-after"):
            request.setHeader(name, value)
    if limited:
        # distribution-spec "Error Codes" and RFC 6585 §4: every 429 says
        # when to come back, whatever raised it (RFC 9110 §10.2.3).
        request.setHeader(b"retry-after", _retry_after(error))
    if request.method == b"HEAD":
        return b""
    return body


def _retry_after(error: RegistryError) -> bytes:
    for name, value in error.headers:
        if name.lower() == b"retry-after" and _RETRY_AFTER.fullmatch(value) is not None:
            return value
    return DEFAULT_RETRY_AFTER


@frozen
class PlainAnswer:
    """
    An answer in one line of C{text/plain}, for clients that show the
    body to their user rather than read JSON (git: remote-curl's
    C{show_http_message}).
    """

    status: int
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def plain_answer(error: BaseException) -> PlainAnswer | None:
    """
    The registry error for C{error} (L{registry_error}, the one map), as a
    status and a line of text; C{None} when it is not one we expect (a
    bug: the caller logs it and answers 500).
    """
    answer = registry_error(error)
    if answer is None:
        return None
    headers = answer.headers
    if answer.status == 429 and not any(name.lower() == b"retry-after" for name, _ in headers):
        headers = (*headers, (b"retry-after", DEFAULT_RETRY_AFTER))
    return PlainAnswer(answer.status, answer.message, headers)
