"""
Tests for L{ocicache._spec._challenge}.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import attrs
import pytest
from twisted.internet.task import Clock

from ocicache._spec._challenge import (
    Challenge,
    TokenCache,
    TokenKey,
    parse_token_response,
    parse_www_authenticate,
)

DOCKER_HUB = (
    'Bearer realm="https://auth.docker.io/token",'
    'service="registry.docker.io",'
    'scope="repository:library/alpine:pull"'
)
GHCR = (
    'Bearer realm="https://ghcr.io/token",'
    'service="ghcr.io",'
    'scope="repository:user/image:pull"'
)
QUAY = 'Bearer realm="https://quay.io/v2/auth",service="quay.io"'

SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"


def bearer(**params: str) -> Challenge:
    return Challenge("bearer", params)


# --- parse_www_authenticate -------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        pytest.param(
            [DOCKER_HUB],
            [
                bearer(
                    realm="https://auth.docker.io/token",
                    service="registry.docker.io",
                    scope="repository:library/alpine:pull",
                )
            ],
            id="docker-hub",
        ),
        pytest.param(
            [GHCR],
            [
                bearer(
                    realm="https://ghcr.io/token",
                    service="ghcr.io",
                    scope="repository:user/image:pull",
                )
            ],
            id="ghcr",
        ),
        pytest.param(
            [QUAY],
            [bearer(realm="https://quay.io/v2/auth", service="quay.io")],
            id="quay",
        ),
        pytest.param(
            ['Basic realm="Registry Realm"'],
            [Challenge("basic", {"realm": "Registry Realm"})],
            id="basic",
        ),
        pytest.param(
            ["Basic"],
            [Challenge("basic")],
            id="scheme-only",
        ),
        pytest.param(
            ['Basic realm="x", Bearer realm="y",service="z"'],
            [
                Challenge("basic", {"realm": "x"}),
                bearer(realm="y", service="z"),
            ],
            id="two-in-one-value",
        ),
        pytest.param(
            ['Basic realm="x"', 'Bearer realm="y",service="z"'],
            [
                Challenge("basic", {"realm": "x"}),
                bearer(realm="y", service="z"),
            ],
            id="two-values",
        ),
        pytest.param(
            ["Basic, Bearer realm=y"],
            [Challenge("basic"), bearer(realm="y")],
            id="bare-scheme-then-another",
        ),
        pytest.param(
            ['Bearer realm="r",scope="repository:a/b:pull,push"'],
            [bearer(realm="r", scope="repository:a/b:pull,push")],
            id="comma-in-quoted-string",
        ),
        pytest.param(
            [
                'Bearer realm="r",'
                'scope="repository:a/b:pull repository:c/d:pull,push"'
            ],
            [
                bearer(
                    realm="r",
                    scope="repository:a/b:pull repository:c/d:pull,push",
                )
            ],
            id="space-in-quoted-string",
        ),
        pytest.param(
            ['Bearer realm="a\\"b\\\\c\\d", service=""'],
            [bearer(realm='a"b\\cd', service="")],
            id="quoted-pairs",
        ),
        pytest.param(
            ["Bearer realm=r.example, service=svc"],
            [bearer(realm="r.example", service="svc")],
            id="token-values",
        ),
        pytest.param(
            ['Bearer realm = "r" ,  service\t=\t"s"  ,'],
            [bearer(realm="r", service="s")],
            id="bad-whitespace",
        ),
        pytest.param(
            ['BEARER Realm="r",SERVICE="s"'],
            [bearer(realm="r", service="s")],
            id="case-insensitive",
        ),
        pytest.param(
            [",, ,Bearer realm=r,,service=s, ,"],
            [bearer(realm="r", service="s")],
            id="empty-list-elements",
        ),
        pytest.param(
            ['Bearer realm="first",realm="second"'],
            [bearer(realm="first")],
            id="duplicate-param-first-wins",
        ),
        pytest.param(
            ['Bearer realm="r",error="insufficient_scope"'],
            [bearer(realm="r", error="insufficient_scope")],
            id="error-param",
        ),
        pytest.param(
            ["Negotiate YII=, Basic realm=x"],
            [
                Challenge("negotiate", token68="YII="),
                Challenge("basic", {"realm": "x"}),
            ],
            id="token68",
        ),
        pytest.param(
            ['Bearer realm="r\u00e9alm"'],
            [bearer(realm="r\u00e9alm")],
            id="obs-text",
        ),
    ],
)
def test_parse(values: list[str], expected: list[Challenge]) -> None:
    assert parse_www_authenticate(values) == expected


@pytest.mark.parametrize(
    "values, expected",
    [
        pytest.param([], [], id="no-values"),
        pytest.param([""], [], id="empty"),
        pytest.param([",,,  ,"], [], id="only-commas"),
        pytest.param(['"'], [], id="lone-quote"),
        pytest.param(["=,=,="], [], id="only-equals"),
        pytest.param(['realm="x"'], [], id="param-without-scheme"),
        pytest.param(
            ['Bearer realm="unterminated, Basic realm=x'],
            [],
            id="unterminated-quote",
        ),
        pytest.param(
            ['Bearer realm="x" junk, Basic realm="y"'],
            [Challenge("basic", {"realm": "y"})],
            id="junk-after-first-param-drops-challenge",
        ),
        pytest.param(
            ['Bearer realm="r", service=a b c, scope="s"'],
            [bearer(realm="r", scope="s")],
            id="junk-param-skipped",
        ),
        pytest.param(
            ['Bearer realm="r", \u2603, scope="s"'],
            [bearer(realm="r", scope="s")],
            id="non-ascii-element-skipped",
        ),
        pytest.param(
            ["Bearer realm=https://r/token"],
            [],
            id="url-is-not-a-token",
        ),
        pytest.param(
            ["Negotiate abc==, realm=x"],
            [Challenge("negotiate", token68="abc==")],
            id="no-params-after-token68",
        ),
        pytest.param(
            ['Bearer realm="a\r\nb"'],
            [],
            id="control-characters-in-quoted-string",
        ),
        pytest.param(
            ["Bearer\trealm=x, Basic realm=y"],
            [Challenge("basic", {"realm": "y"})],
            id="tab-after-scheme",
        ),
        pytest.param(
            ["\u00e9 realm=x, Basic realm=y"],
            [Challenge("basic", {"realm": "y"})],
            id="non-token-scheme",
        ),
    ],
)
def test_parse_garbage(values: list[str], expected: list[Challenge]) -> None:
    assert parse_www_authenticate(values) == expected


@pytest.mark.parametrize(
    "value",
    [
        "a" * 100_000,
        "Bearer " + "a=b" * 30_000,
        'Bearer realm="' + '\\"' * 50_000,
        "Bearer realm=" + "x" * 100_000 + " y",
        "Bearer a" + " " * 100_000 + "b",
        "Bearer " + "," * 100_000,
        '"' * 100_001,
    ],
)
def test_parse_hostile_is_fast(value: str) -> None:
    start = time.perf_counter()
    parse_www_authenticate([value])
    assert time.perf_counter() - start < 1.0


def test_challenge_param_accessor() -> None:
    [challenge] = parse_www_authenticate([DOCKER_HUB])
    assert challenge.scheme == "bearer"
    assert challenge.param("realm") == "https://auth.docker.io/token"
    assert challenge.param("Service") == "registry.docker.io"
    assert challenge.param("missing") is None


def test_challenge_normalises_and_is_hashable() -> None:
    one = Challenge("Bearer", {"Realm": "r", "SCOPE": "s"})
    two = Challenge("bearer", [("realm", "r"), ("scope", "s")])
    assert one == two
    assert hash(one) == hash(two)
    assert one.scheme == "bearer"
    assert dict(one.params) == {"realm": "r", "scope": "s"}
    assert {one: 1}[two] == 1
    assert one != Challenge("bearer", {"realm": "r"})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        one.scheme = "basic"  # type: ignore[misc]
    with pytest.raises(TypeError):
        one.params["realm"] = "x"  # type: ignore[index]


def test_challenge_params_copied() -> None:
    """
    Mutating the mapping a L{Challenge} was built from does not change it.
    """
    source = {"realm": "r"}
    challenge = Challenge("bearer", source)
    source["realm"] = "changed"
    assert challenge.param("realm") == "r"


# --- TokenCache -------------------------------------------------------------

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


@pytest.mark.parametrize(
    "expires_in", [30, 29.5, 0, -1, -1e300, float("nan"), float("inf")]
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


# --- parse_token_response ---------------------------------------------------


@pytest.mark.parametrize(
    "document, expected",
    [
        ({"token": SECRET, "expires_in": 300}, (SECRET, 300.0)),
        ({"token": SECRET}, (SECRET, None)),
        ({"access_token": SECRET, "expires_in": 60}, (SECRET, 60.0)),
        ({"token": SECRET, "access_token": "other"}, (SECRET, None)),
        ({"token": "", "access_token": SECRET}, (SECRET, None)),
        ({"token": None, "access_token": SECRET}, (SECRET, None)),
        ({"token": SECRET, "expires_in": 12.5}, (SECRET, 12.5)),
        ({"token": SECRET, "expires_in": -5}, (SECRET, -5.0)),
        ({"token": SECRET, "expires_in": "300"}, (SECRET, None)),
        ({"token": SECRET, "expires_in": True}, (SECRET, None)),
        ({"token": SECRET, "expires_in": None}, (SECRET, None)),
        ({"token": SECRET, "expires_in": 10**400}, (SECRET, None)),
        (
            {
                "token": SECRET,
                "expires_in": 300,
                "issued_at": "2024-05-01T12:00:00Z",
                "refresh_token": "r",
            },
            (SECRET, 300.0),
        ),
    ],
)
def test_parse_token_response(
    document: dict[str, object], expected: tuple[str, float | None]
) -> None:
    body = json.dumps(document).encode("utf-8")
    assert parse_token_response(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json " + SECRET.encode(),
        b'{"token": "' + SECRET.encode(),
        b"\xff\xfe\x00" + SECRET.encode(),
        b"[" * 100_000 + b"]" * 100_000,
        b'["' + SECRET.encode() + b'"]',
        b'"' + SECRET.encode() + b'"',
        b"null",
        b"{}",
        b'{"expires_in": 300}',
        b'{"token": ""}',
        b'{"token": 12345}',
        b'{"token": ["' + SECRET.encode() + b'"]}',
        b'{"token": "' + SECRET.encode() + b'\\r\\nX-Evil: 1"}',
        b'{"token": "' + SECRET.encode() + b' x"}',
        b'{"access_token": "' + SECRET.encode() + b'\\u00e9"}',
    ],
)
def test_parse_token_response_errors(body: bytes) -> None:
    with pytest.raises(ValueError) as info:
        parse_token_response(body)
    message = str(info.value)
    assert message.startswith("token response ")
    assert SECRET not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None
