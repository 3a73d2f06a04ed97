"""
An upstream's pull quota, as its responses tell it: Docker Hub's rate-limit
headers and C{Retry-After}.

Docker Hub ("Docker Hub usage and limits") sends on manifest responses,
C{GET} and C{HEAD} alike::

    ratelimit-limit: 100;w=21600
    ratelimit-remaining: 76;w=21600
    docker-ratelimit-source: 192.0.2.1

and, once the pulls of the window are spent, C{429 TOOMANYREQUESTS}
("You have reached your pull rate limit") with the same headers,
C{remaining} at 0.  A 429 without them is another kind: an abuse or
fair-use limit, a CDN or proxy in front of the registry.

Everything here is pure: header values in, L{Quota} values out, the
current time passed in.
"""

from __future__ import annotations

from attrs import evolve, frozen
from twisted.web.http import stringToDatetime

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_WINDOW",
    "MAX_BACKOFF",
    "Quota",
    "RateLimit",
    "parse_quota_value",
    "parse_ratelimit",
    "parse_retry_after",
]

DEFAULT_BACKOFF = 60.0
"""Seconds an upstream is left alone after a 429 that says neither when nor why."""

DEFAULT_WINDOW = 21600.0
"""Docker Hub's documented window (6 hours), for a pull-limit 429 that names none."""

MAX_BACKOFF = 86400.0
"""The longest an upstream is left alone, whatever it asks: a day."""

_MAX_DIGITS = 15
"""Longer numbers are not a quota; and Python refuses to parse huge ones anyway."""

_MAX_SOURCE = 128


@frozen
class RateLimit:
    """
    What one response's rate-limit headers said; a field is C{None} when
    its header was missing or not understood.
    """

    limit: int | None
    remaining: int | None
    window: float | None
    """Seconds, from the C{;w=} parameter of either header."""
    source: str | None
    """C{docker-ratelimit-source}: the address or account the quota is counted for."""


def parse_quota_value(value: bytes) -> tuple[int, float | None] | None:
    """
    One C{ratelimit-limit} or C{ratelimit-remaining} value: the quota and
    its window in seconds, or C{None} when it is not of the form
    C{<digits>[;w=<digits>]...}.  A list of policies (C{"100, 100;w=21600"},
    the IETF draft's form) gives the first quota, and the first window
    named anywhere in it.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    quota: int | None = None
    window: float | None = None
    for item in text.split(","):
        number, *params = (part.strip() for part in item.split(";"))
        if not _is_number(number):
            return None
        if quota is None:
            quota = int(number)
        for param in params:
            name, _, argument = param.partition("=")
            if name.strip().lower() == "w":
                argument = argument.strip()
                if not _is_number(argument):
                    return None
                if window is None:
                    window = float(int(argument))
    if quota is None:
        return None
    return quota, window


def _is_number(text: str) -> bool:
    return 0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit()


def parse_ratelimit(limit: bytes | None, remaining: bytes | None, source: bytes | None) -> RateLimit | None:
    """
    The rate-limit headers of one response, or C{None} when it carried
    neither C{ratelimit-limit} nor C{ratelimit-remaining} in a form
    understood.
    """
    parsed_limit = parse_quota_value(limit) if limit is not None else None
    parsed_remaining = parse_quota_value(remaining) if remaining is not None else None
    if parsed_limit is None and parsed_remaining is None:
        return None
    window = None
    for parsed in (parsed_remaining, parsed_limit):
        if parsed is not None and parsed[1] is not None:
            window = parsed[1]
            break
    return RateLimit(
        limit=parsed_limit[0] if parsed_limit is not None else None,
        remaining=parsed_remaining[0] if parsed_remaining is not None else None,
        window=window,
        source=_source(source),
    )


def _source(value: bytes | None) -> str | None:
    if value is None:
        return None
    text = value.decode("ascii", "replace").strip()
    if not text or len(text) > _MAX_SOURCE or not text.isprintable():
        return None
    return text


def parse_retry_after(value: bytes, now: float) -> float | None:
    """
    Seconds from C{now} that C{Retry-After} asks to wait (RFC 9110
    §10.2.3: C{delay-seconds} or an C{HTTP-date}, in any of the three
    formats of §5.6.7), never negative; C{None} when it is neither.
    """
    text = value.strip()
    if text.isdigit():
        return float(int(text)) if len(text) <= _MAX_DIGITS else MAX_BACKOFF
    try:
        when = stringToDatetime(text)
    except (ValueError, IndexError, KeyError, OverflowError):
        return None
    return max(0.0, float(when) - now)


@frozen
class Quota:
    """
    What ocicache knows of one upstream's quota: the last rate-limit values
    it sent (and when), and until when it is left alone after a 429.
    """

    limit: int | None = None
    remaining: int | None = None
    window: float | None = None
    source: str | None = None
    observed_at: float | None = None
    """When the upstream last sent rate-limit headers."""
    limited_until: float | None = None
    pull_limit: bool = False
    """Whether the last 429 was a pull limit (it carried rate-limit headers)."""

    def limited_for(self, now: float) -> float:
        """Seconds left before the upstream may be asked again; 0 when it may."""
        if self.limited_until is None:
            return 0.0
        return max(0.0, self.limited_until - now)

    def below(self, floor: int | float, now: float) -> bool:
        """
        Whether fewer than C{floor} pulls are left: an C{int} is a count, a
        C{float} a fraction of the limit.  Once a whole window has passed
        since the upstream said so, every pull it counted has left the
        window (Docker Hub's is a sliding one), so it is not below any more.
        """
        if self.remaining is None or self.observed_at is None:
            return False
        if self.window is not None and now - self.observed_at >= self.window:
            return False
        if isinstance(floor, float):
            if self.limit is None:
                return False
            return self.remaining < floor * self.limit
        return self.remaining < floor

    def observed(self, ratelimit: RateLimit | None, now: float, refused: bool = False,
                 retry_after: bytes | None = None) -> Quota:
        """
        The quota after a response with these rate-limit headers; C{refused}
        for a 429, which leaves the upstream alone for its C{Retry-After}:
        without one, for the window of a pull limit, or L{DEFAULT_BACKOFF}
        for any other kind, and never longer than L{MAX_BACKOFF}.
        """
        quota = self
        if ratelimit is not None:
            quota = evolve(
                quota,
                limit=ratelimit.limit if ratelimit.limit is not None else quota.limit,
                remaining=ratelimit.remaining if ratelimit.remaining is not None else quota.remaining,
                window=ratelimit.window if ratelimit.window is not None else quota.window,
                source=ratelimit.source if ratelimit.source is not None else quota.source,
                observed_at=now,
            )
        if not refused:
            return quota
        pull_limit = ratelimit is not None
        wait = parse_retry_after(retry_after, now) if retry_after is not None else None
        if wait is None:
            wait = (quota.window or DEFAULT_WINDOW) if pull_limit else DEFAULT_BACKOFF
        return evolve(quota, limited_until=now + min(wait, MAX_BACKOFF), pull_limit=pull_limit)
