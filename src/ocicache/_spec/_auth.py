"""
HTTP authentication challenges, credentials, and registry token responses.

An upstream registry answers an unauthenticated request with C{401} and a
C{WWW-Authenticate} challenge (RFC 9110 §11.6.1).  Registries send two
kinds: C{Bearer realm="...",service="...",scope="..."}, which names a token
server (distribution "Token Authentication Specification"), and
C{Basic realm="..."}.  The parser covers those: a scheme, then
comma-separated C{name=value} auth-params whose values are tokens or
quoted strings.  The header comes from upstreams we do not control, so
it never raises and drops what it cannot understand.

The other way round, ocicache itself challenges its clients
(L{format_challenge}) and reads the credentials they send
(L{parse_authorization}: RFC 7617 Basic, RFC 6750 Bearer).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from attrs import Factory, field, frozen

__all__ = [
    "BasicCredentials",
    "BearerCredentials",
    "Challenge",
    "InvalidAuthorization",
    "format_challenge",
    "parse_authorization",
    "parse_token_response",
    "parse_www_authenticate",
]


@frozen
class Challenge:
    """
    One challenge: its auth-scheme and auth-params, names lowercased
    (RFC 9110 §11.1 and §11.2: both are case-insensitive).
    """

    scheme: str
    params: dict[str, str] = Factory(dict)


# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9110 §5.6.4: quoted-string, with quoted-pairs; no control characters
# but HTAB.  obs-text (and anything a UTF-8 decode produced) is allowed.
_QUOTED = r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*)"'
# RFC 9110 §11.2: auth-param = token BWS "=" BWS ( token / quoted-string ),
# ending its list element (OWS, then "," or the end).
_PARAM = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*(?:({_TOKEN})|{_QUOTED})[ \t]*(?=,|\Z)")
# A challenge starts with its scheme, then 1*SP and its first auth-param,
# or the end of the element.
_SCHEME = re.compile(rf"({_TOKEN})(?:( +)|[ \t]*(?=,|\Z))")
# The rest of a list element that could not be understood: up to the next
# comma outside a quoted string.
_ELEMENT = re.compile(r'[^,"]*(?:"(?:[^"\\]|\\.)*"[^,"]*)*', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def parse_www_authenticate(values: Sequence[str]) -> list[Challenge]:
    """
    The challenges in a response's C{WWW-Authenticate} values, in order:
    RFC 9110 §11.6.1 allows several, in several fields or one.  A
    challenge whose first auth-param is garbage is dropped whole; a later
    garbage element is skipped.
    """
    challenges: list[Challenge] = []
    for value in values:
        current: Challenge | None = None
        pos, end = 0, len(value)
        while pos < end:
            if value[pos] in " \t,":
                pos += 1
                continue
            param = _PARAM.match(value, pos)
            if param is not None:
                if current is not None:
                    name, token, quoted = param.groups()
                    text = token if token is not None else _QUOTED_PAIR.sub(r"\1", quoted)
                    # §11.2 forbids repeating a name; the first one wins.
                    current.params.setdefault(name.lower(), text)
                pos = param.end()
                continue
            scheme = _SCHEME.match(value, pos)
            if scheme is not None:
                current = Challenge(scheme.group(1).lower())
                challenges.append(current)
                pos = scheme.end()
                if scheme.group(2) and _PARAM.match(value, pos) is None:
                    # Garbage right after the scheme: not to be trusted.
                    challenges.pop()
                    current = None
                else:
                    continue
            skipped = _ELEMENT.match(value, pos)
            pos = skipped.end() if skipped is not None else pos
            if pos < end and value[pos] == '"':
                pos = end  # an unterminated quoted string runs to the end
    return challenges


# A token is sent back as "Authorization: Bearer <token>", so it must be
# a non-empty run of visible ASCII (RFC 9110 section 5.5, VCHAR); anything
# else could break or inject into that header.
_TOKEN_VALUE = re.compile(r"[\x21-\x7e]+")


def _usable_token(value: Any) -> str | None:
    """
    C{value} if it is a string that can be sent as a bearer token, else
    L{None}.
    """
    if isinstance(value, str) and _TOKEN_VALUE.fullmatch(value) is not None:
        return value
    return None


def _expires_in(value: Any) -> float | None:
    """
    C{value} as a finite number of seconds, or L{None} if it is not one.
    """
    # JSON true/false decode to bool, which is an int subclass.
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def parse_token_response(body: bytes) -> tuple[str, float | None]:
    """
    Parse a token server's JSON response.

    Token spec, "Token Response Fields": the token is in C{token}, or in
    C{access_token} for OAuth 2.0 compatibility; when both are present they
    are meant to be the same, and C{token} is preferred.  C{expires_in} is
    optional.

    @return: The token and its C{expires_in} in seconds, or L{None} when
        absent or not a finite number.
    @raise ValueError: If the body is not a JSON object holding a usable
        token.  The message never includes the body or the token.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("token response is not valid JSON") from None
    if not isinstance(document, dict):
        raise ValueError("token response is not a JSON object")

    token = _usable_token(document.get("token"))
    if token is None:
        token = _usable_token(document.get("access_token"))
    if token is None:
        if "token" in document or "access_token" in document:
            raise ValueError("token response has a malformed token")
        raise ValueError("token response has no token")
    return token, _expires_in(document.get("expires_in"))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _quoted(value: str) -> str:
    """RFC 9110 §5.6.4: a quoted-string, with C{"} and C{\\} escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_challenge(challenge: Challenge) -> bytes:
    """
    A C{WWW-Authenticate} field value for C{challenge} (RFC 9110 §11.6.1):
    the scheme, then its auth-params as quoted strings, in order.  Control
    characters cannot be written into a header and are dropped.
    """
    params = ",".join(
        f"{name}={_quoted(_CONTROL.sub('', value))}" for name, value in challenge.params.items()
    )
    text = f"{challenge.scheme} {params}" if params else challenge.scheme
    return text.encode("utf-8")


class InvalidAuthorization(ValueError):
    """
    An C{Authorization} header that is neither Basic nor Bearer, or is
    malformed.  The message never includes the header.
    """


@frozen
class BasicCredentials:
    """RFC 7617: a user-id and a password.  The password never shows in C{repr()}."""

    username: str
    password: str = field(repr=False)


@frozen
class BearerCredentials:
    """RFC 6750 §2.1: a bearer token.  It never shows in C{repr()}."""

    token: str = field(repr=False)


# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def parse_authorization(value: bytes) -> BasicCredentials | BearerCredentials:
    """
    The credentials in an C{Authorization} header value: C{Basic} (RFC 7617
    §2: base64 of C{user-id ":" password}, UTF-8) or C{Bearer} (RFC 6750
    §2.1).  Schemes are case-insensitive (RFC 9110 §11.1).

    @raise InvalidAuthorization: For any other scheme or a malformed value.
    """
    scheme, _, rest = value.strip().partition(b" ")
    rest = rest.strip()
    kind = scheme.lower()
    if kind == b"basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidAuthorization("malformed Basic credentials") from None
        username, colon, password = decoded.partition(":")
        if not colon or _CONTROL.search(decoded):
            raise InvalidAuthorization("malformed Basic credentials")
        return BasicCredentials(username, password)
    if kind == b"bearer":
        token = rest.decode("ascii", "replace")
        if _B64TOKEN.fullmatch(token) is None:
            raise InvalidAuthorization("malformed Bearer token")
        return BearerCredentials(token)
    raise InvalidAuthorization("unsupported authorization scheme; use Basic or Bearer")
