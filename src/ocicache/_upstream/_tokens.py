"""
Bearer tokens from registry token servers, cached per realm, service,
scope and user until shortly before they expire
(https://distribution.github.io/distribution/spec/auth/token/).  Tokens
are credentials: they never appear in a C{repr()} or an exception message.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Protocol

from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime

from .._ops._config import Credentials

__all__ = ["TokenCache", "TokenKey"]


@frozen
class TokenKey:
    """
    What a bearer token was issued for: the token server (C{realm}), the
    C{service} and C{scope} asked for, and the user who asked (L{None} for
    an anonymous token).  Tokens for different keys must never be mixed up,
    so the cache is keyed on all four, and on the C{credentials} they were
    asked with: when a credential helper or a reload rotates the password
    of the same user, a token the old one got is not handed out again.
    """

    realm: str
    service: str | None
    scope: str | None
    username: str | None
    credentials: Credentials | None = field(default=None, repr=False)


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
# the cache is still valid by the time the upstream sees it; a short token
# is kept for the first half of its lifetime (a 10 s token for 5 s), so
# that a token server issuing them is not asked once per request.
_EXPIRY_MARGIN = 30.0


class TokenCache:
    """
    Bearer tokens from registry token servers, kept until shortly before
    they expire.

    Tokens are dropped C{30} seconds before their C{expires_in}, or half
    way through it when that is shorter than a minute, and the cache
    holds at most C{max_entries} tokens, dropping the least recently
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

        A token that would be dropped at once (because it has no lifetime
        left) is not stored.

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
        expires = start + expires_in - min(_EXPIRY_MARGIN, expires_in / 2)
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


