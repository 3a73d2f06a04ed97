"""
HTTP authentication challenges and the bearer tokens they lead to.

An upstream registry answers an unauthenticated request with C{401} and a
C{WWW-Authenticate} challenge (RFC 9110 section 11.6.1).  For the C{Bearer}
scheme the challenge names a token server (C{realm}), a C{service} and a
C{scope}; the token server hands back a short-lived token
(https://distribution.github.io/distribution/spec/auth/token/).  This
module parses both ends of that exchange and caches the tokens.

Challenge headers come from upstreams we do not control, so the parser is
lenient: it never raises, and drops what it cannot understand.  Tokens are
credentials, so they never appear in a C{repr()} or an exception message.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime

__all__ = [
    "Challenge",
    "TokenCache",
    "TokenKey",
    "parse_token_response",
    "parse_www_authenticate",
]


class _Params(Mapping[str, str]):
    """
    An immutable, hashable mapping of auth-param names to values, so that a
    frozen L{Challenge} can be hashed and compared.
    """

    __slots__ = ("_items",)

    _items: dict[str, str]

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


def _freeze_params(
    params: Mapping[str, str] | Iterable[tuple[str, str]],
) -> _Params:
    """
    Convert C{params} to a L{_Params} with lowercase names.  RFC 9110
    section 11.2: parameter names are matched case-insensitively.  When a
    name repeats (which section 11.2 forbids), the first value wins.
    """
    pairs = params.items() if isinstance(params, Mapping) else params
    items: dict[str, str] = {}
    for name, value in pairs:
        items.setdefault(name.lower(), value)
    return _Params(items.items())


def _lower(scheme: str) -> str:
    # RFC 9110 section 11.1: the auth-scheme is case-insensitive.
    return scheme.lower()


@frozen
class Challenge:
    """
    One authentication challenge from a C{WWW-Authenticate} header.

    @ivar scheme: The auth-scheme, lowercased (C{"bearer"}, C{"basic"}).
    @ivar params: The auth-params, with lowercased names.
    @ivar token68: The token68 form of credentials, which a challenge
        carries instead of auth-params (RFC 9110 section 11.2); registries
        do not use it.
    """

    scheme: str = field(converter=_lower)
    params: Mapping[str, str] = field(factory=dict, converter=_freeze_params)
    token68: str | None = None

    def param(self, name: str) -> str | None:
        """
        The value of the auth-param C{name}, matched case-insensitively, or
        L{None} if it is absent.
        """
        return self.params.get(name.lower())


# RFC 9110 section 5.6.2:
#   token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"

# RFC 9110 section 5.6.4:
#   quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#   qdtext        = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#   quoted-pair   = "\" ( HTAB / SP / VCHAR / obs-text )
# obs-text is %x80-FF; anything above that can only come from a header that
# was decoded as UTF-8, and is accepted the same way.
_QUOTED_STRING = (
    r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]'
    r"|\\[\t \x21-\x7e\x80-\U0010ffff])*)"
    r'"'
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)

# RFC 9110 section 11.2:
#   auth-param = token BWS "=" BWS ( token / quoted-string )
# followed here by the end of the list element: OWS, then "," or the end.
_AUTH_PARAM = re.compile(
    r"(" + _TCHAR + r"+)[ \t]*=[ \t]*"
    r"(?:(" + _TCHAR + r"+)|" + _QUOTED_STRING + r")"
    r"[ \t]*(?=,|\Z)"
)

# RFC 9110 section 11.2:
#   token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN68 = re.compile(r"([A-Za-z0-9\-._~+/]+=*)[ \t]*(?=,|\Z)")

# RFC 9110 section 11.2: challenge = auth-scheme [ 1*SP ( ... ) ].  The
# scheme is followed by at least one space, a comma, or the end.
_AUTH_SCHEME = re.compile(r"(" + _TCHAR + r"+)(?: +|[ \t]*(?=,|\Z))")


def _skip_element(value: str, pos: int) -> int:
    """
    Return the position of the next list-separating comma at or after
    C{pos} (or the end of C{value}), stepping over quoted strings so that a
    comma inside one does not count.
    """
    end = len(value)
    while pos < end:
        char = value[pos]
        if char == ",":
            return pos
        if char == '"':
            # An unterminated quote runs to the end of the value.
            closing = _find_closing_quote(value, pos + 1)
            if closing < 0:
                return end
            pos = closing + 1
        else:
            pos += 1
    return end


def _find_closing_quote(value: str, pos: int) -> int:
    """
    Return the index of the DQUOTE closing a quoted-string whose content
    starts at C{pos}, honouring quoted-pairs, or -1 if there is none.
    """
    end = len(value)
    while pos < end:
        char = value[pos]
        if char == "\\":
            pos += 2
        elif char == '"':
            return pos
        else:
            pos += 1
    return -1


def _parse_header(value: str) -> Iterator[Challenge]:
    """
    Parse one C{WWW-Authenticate} field value, yielding the challenges
    that can be understood.

    The field value is a comma-separated list (RFC 9110 section 5.6.1)
    whose elements are either the start of a new challenge (a scheme,
    optionally followed by a space and its first auth-param or a token68)
    or a further auth-param of the challenge before it.  An element that is
    neither is skipped.
    """
    scheme: str | None = None
    params: list[tuple[str, str]] = []
    token68: str | None = None
    accepts_params = False
    pos = 0
    end = len(value)

    while pos < end:
        # RFC 9110 section 5.6.1: list elements are separated by
        # OWS "," OWS, and empty elements are allowed.  OWS is
        # *( SP / HTAB ) (section 5.6.3).
        if value[pos] in " \t,":
            pos += 1
            continue

        # Another auth-param of the current challenge?
        param = _AUTH_PARAM.match(value, pos)
        if param is not None:
            if accepts_params:
                params.append(_param_pair(param))
            pos = param.end()
            continue

        # The start of a new challenge?
        start = _AUTH_SCHEME.match(value, pos)
        if start is None:
            pos = _skip_element(value, pos)
            continue
        if scheme is not None:
            yield Challenge(scheme, params, token68)
        scheme = start.group(1)
        params = []
        token68 = None
        accepts_params = True
        pos = start.end()
        if pos >= end or value[pos] == ",":
            continue

        # The scheme was followed by spaces: its first auth-param, or a
        # token68 that stands in for all of them.
        param = _AUTH_PARAM.match(value, pos)
        if param is not None:
            params.append(_param_pair(param))
            pos = param.end()
            continue
        credentials = _TOKEN68.match(value, pos)
        if credentials is not None:
            token68 = credentials.group(1)
            accepts_params = False
            pos = credentials.end()
            continue
        # Garbage after the scheme: the challenge cannot be trusted.
        scheme = None
        accepts_params = False
        pos = _skip_element(value, pos)

    if scheme is not None:
        yield Challenge(scheme, params, token68)


def _param_pair(match: re.Match[str]) -> tuple[str, str]:
    """
    The name and unescaped value of an L{_AUTH_PARAM} match.
    """
    name, token, quoted = match.groups()
    if token is not None:
        return name, token
    # RFC 9110 section 5.6.4: a quoted-pair stands for its second octet.
    return name, _QUOTED_PAIR.sub(r"\1", quoted)


def parse_www_authenticate(values: Sequence[str]) -> list[Challenge]:
    """
    Parse the values of every C{WWW-Authenticate} header in a response.

    RFC 9110 section 11.6.1: a response may carry several challenges, in
    several header fields or comma-separated within one.  Malformed parts
    are skipped rather than raising, since the header comes from an
    upstream we do not control.

    @param values: The field values, in the order received.
    @return: The challenges, in order.
    """
    challenges: list[Challenge] = []
    for value in values:
        if isinstance(value, str):
            challenges.extend(_parse_header(value))
    return challenges


@frozen
class TokenKey:
    """
    What a bearer token was issued for: the token server (C{realm}), the
    C{service} and C{scope} asked for, and the user who asked (L{None} for
    an anonymous token).  Tokens for different keys must never be mixed up,
    so the cache is keyed on all four.
    """

    realm: str
    service: str | None
    scope: str | None
    username: str | None


class _Clock(Protocol):
    """
    The part of L{IReactorTime} the cache uses.  Holding the clock as this
    protocol lets mypy check the C{seconds()} call without a zope.interface
    plugin, which would otherwise see an interface method with no C{self}.
    """

    def seconds(self) -> float:
        """
        The current time in seconds.
        """


@frozen
class _Entry:
    """
    A cached token and the time at which it stops being handed out.
    """

    token: str = field(repr=False)
    expires: float


# Token spec, "Token Response Fields": expires_in defaults to 60 seconds.
_DEFAULT_EXPIRES_IN = 60.0

# Stop using a token this long before it expires, so that one taken from
# the cache is still valid by the time the upstream sees it.
_EXPIRY_MARGIN = 30.0


class TokenCache:
    """
    Bearer tokens from registry token servers, kept until shortly before
    they expire.

    Tokens are dropped C{30} seconds before their C{expires_in}, and the
    cache holds at most C{max_entries} tokens, dropping the least recently
    stored when full.
    """

    def __init__(self, clock: IReactorTime, max_entries: int = 1024) -> None:
        """
        @param clock: The source of time; its C{seconds()} must be POSIX
            time (as the reactor's is) for C{issued_at} to be honoured.
        @param max_entries: The most tokens to keep; at least 1.
        """
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock: _Clock = clock
        self._max_entries = max_entries
        self._entries: dict[TokenKey, _Entry] = {}

    def __repr__(self) -> str:
        return f"<TokenCache with {len(self._entries)} tokens>"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: TokenKey) -> str | None:
        """
        The cached token for C{key}, or L{None} if there is none or it is
        about to expire.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock.seconds() >= entry.expires:
            del self._entries[key]
            return None
        return entry.token

    def put(
        self,
        key: TokenKey,
        token: str,
        expires_in: float | None,
        issued_at: str | None = None,
    ) -> None:
        """
        Store C{token} for C{key}, replacing any token already stored.

        A token that would be dropped at once (because its lifetime is no
        more than the safety margin) is not stored.

        @param expires_in: The token's lifetime in seconds, from the token
            response; L{None} means the spec's default of 60 seconds.
        @param issued_at: The token response's C{issued_at}, an RFC 3339
            time.  Token spec: the lifetime counts from it when present.  It
            is only allowed to shorten the lifetime, never to lengthen it,
            so a token server whose clock runs ahead of ours cannot make us
            keep a token too long.  An unparseable value is ignored.
        """
        self._entries.pop(key, None)
        if expires_in is None:
            expires_in = _DEFAULT_EXPIRES_IN
        if not math.isfinite(expires_in):
            return
        now = self._clock.seconds()
        start = now
        issued = _parse_rfc3339(issued_at) if issued_at is not None else None
        if issued is not None:
            start = min(start, issued)
        expires = start + expires_in - _EXPIRY_MARGIN
        if not expires > now:
            return
        # Dicts keep insertion order, and a replaced key was popped above,
        # so the first key is the one stored longest ago.
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(token, expires)


def _parse_rfc3339(text: str) -> float | None:
    """
    Parse an RFC 3339 timestamp to POSIX seconds, or return L{None} if it
    is not one.  A timestamp without an offset is taken as UTC, which the
    token spec says C{issued_at} is.
    """
    try:
        parsed = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


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
