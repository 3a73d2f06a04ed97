"""
Tests for L{ocicache._upstream._tokens}: the bearer token cache.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest
from twisted.internet.task import Clock

from ocicache._upstream._tokens import TokenCache, TokenKey

SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"


KEY = TokenKey(
    realm="https://auth.docker.io/token",
    service="registry.docker.io",
    scope="repository:library/alpine:pull",
    username=None,
)


def test_cache_miss() -> None:
    assert TokenCache(Clock()).get(KEY) is None


def test_cache_expires_30_seconds_early() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    cache.put(KEY, SECRET, 300)
    assert cache.get(KEY) == SECRET
    clock.advance(269.9)
    assert cache.get(KEY) == SECRET
    clock.advance(0.1)
    assert cache.get(KEY) is None
    assert len(cache) == 0


def test_cache_default_expires_in() -> None:
    """
    Token spec: C{expires_in} defaults to 60 seconds, so the token is
    handed out for 30.
    """
    clock = Clock()
    cache = TokenCache(clock)
    cache.put(KEY, SECRET, None)
    clock.advance(29.9)
    assert cache.get(KEY) == SECRET
    clock.advance(0.1)
    assert cache.get(KEY) is None


@pytest.mark.parametrize("expires_in", [10, 30, 59.5])
def test_cache_keeps_short_tokens_for_half_their_lifetime(expires_in: float) -> None:
    """
    A token living less than a minute is kept for half its lifetime: a
    token server issuing 10 s tokens is asked once per 5 s, not once per
    request (issue 19, item 3).
    """
    clock = Clock()
    cache = TokenCache(clock)
    cache.put(KEY, SECRET, expires_in)
    clock.advance(expires_in / 2 - 0.1)
    assert cache.get(KEY) == SECRET
    clock.advance(0.1)
    assert cache.get(KEY) is None


@pytest.mark.parametrize(
    "expires_in", [0, -1, -1e300, float("nan"), float("inf")]
)
def test_cache_refuses_short_lifetimes(expires_in: float) -> None:
    cache = TokenCache(Clock())
    cache.put(KEY, SECRET, expires_in)
    assert cache.get(KEY) is None
    assert len(cache) == 0


def test_cache_uncacheable_put_drops_old_token() -> None:
    cache = TokenCache(Clock())
    cache.put(KEY, "old", 300)
    cache.put(KEY, SECRET, 0)
    assert cache.get(KEY) is None


def test_cache_replaces() -> None:
    cache = TokenCache(Clock())
    cache.put(KEY, "old", 300)
    cache.put(KEY, SECRET, 300)
    assert cache.get(KEY) == SECRET
    assert len(cache) == 1


@pytest.mark.parametrize(
    "other",
    [
        attrs.evolve(KEY, scope="repository:library/alpine:pull,push"),
        attrs.evolve(KEY, scope=None),
        attrs.evolve(KEY, username="alice"),
        attrs.evolve(KEY, service="other"),
        attrs.evolve(KEY, service=None),
        attrs.evolve(KEY, realm="https://evil.example/token"),
    ],
)
def test_cache_keys_are_separate(other: TokenKey) -> None:
    cache = TokenCache(Clock())
    cache.put(KEY, SECRET, 300)
    assert cache.get(other) is None
    cache.put(other, "other-token", 300)
    assert cache.get(KEY) == SECRET
    assert cache.get(other) == "other-token"


def test_cache_equal_keys_share() -> None:
    cache = TokenCache(Clock())
    cache.put(KEY, SECRET, 300)
    assert cache.get(attrs.evolve(KEY)) == SECRET


def test_cache_bounded_drops_oldest() -> None:
    cache = TokenCache(Clock(), max_entries=3)
    keys = [attrs.evolve(KEY, scope=f"repository:r{i}:pull") for i in range(4)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, f"t{i}", 300)
    # Re-storing the oldest makes it the newest.
    cache.put(keys[0], "t0-again", 300)
    cache.put(keys[3], "t3", 300)
    assert len(cache) == 3
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) == "t0-again"
    assert cache.get(keys[2]) == "t2"
    assert cache.get(keys[3]) == "t3"


def test_cache_default_bound() -> None:
    cache = TokenCache(Clock())
    for i in range(1500):
        cache.put(attrs.evolve(KEY, scope=str(i)), "t", 300)
    assert len(cache) == 1024
    assert cache.get(attrs.evolve(KEY, scope="475")) is None
    assert cache.get(attrs.evolve(KEY, scope="476")) == "t"


def test_cache_rejects_zero_bound() -> None:
    with pytest.raises(ValueError):
        TokenCache(Clock(), max_entries=0)


NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def clock_at(seconds: float) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


def test_cache_issued_at_in_the_past_shortens() -> None:
    """
    Token spec: the lifetime counts from C{issued_at}.
    """
    clock = clock_at(NOW)
    cache = TokenCache(clock)
    cache.put(KEY, SECRET, 300, issued_at="2024-05-01T11:58:00Z")
    clock.advance(149.9)
    assert cache.get(KEY) == SECRET
    clock.advance(0.1)
    assert cache.get(KEY) is None


def test_cache_issued_at_with_offset_and_nanoseconds() -> None:
    clock = clock_at(NOW)
    cache = TokenCache(clock)
    cache.put(KEY, SECRET, 300, issued_at="2024-05-01T13:58:00.123456789+02:00")
    clock.advance(150.1)
    assert cache.get(KEY) == SECRET
    clock.advance(0.1)
    assert cache.get(KEY) is None


def test_cache_issued_at_too_old() -> None:
    cache = TokenCache(clock_at(NOW))
    cache.put(KEY, SECRET, 300, issued_at="2024-05-01T11:55:00Z")
    assert cache.get(KEY) is None


def test_cache_issued_at_in_the_future_ignored() -> None:
    """
    A token server whose clock runs ahead cannot lengthen the lifetime.
    """
    clock = clock_at(NOW)
    cache = TokenCache(clock)
    cache.put(KEY, SECRET, 300, issued_at="2024-05-01T13:00:00Z")
    clock.advance(270)
    assert cache.get(KEY) is None


@pytest.mark.parametrize(
    "issued_at", ["", "yesterday", "2024-13-01T00:00:00Z", "9" * 40]
)
def test_cache_bad_issued_at_ignored(issued_at: str) -> None:
    clock = clock_at(NOW)
    cache = TokenCache(clock)
    cache.put(KEY, SECRET, 300, issued_at=issued_at)
    clock.advance(269.9)
    assert cache.get(KEY) == SECRET
    clock.advance(0.1)
    assert cache.get(KEY) is None


def test_token_not_in_repr() -> None:
    cache = TokenCache(Clock())
    cache.put(KEY, SECRET, 300)
    assert SECRET not in repr(cache)
    assert SECRET not in repr(cache.__dict__)
    for entry in cache._entries.values():
        assert SECRET not in repr(entry)


