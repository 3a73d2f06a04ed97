"""
Tests for L{ocicache._spec._auth}: C{WWW-Authenticate} challenges and
token responses.
"""

from __future__ import annotations

import json
import time

import pytest

from ocicache._spec._auth import Challenge, parse_token_response, parse_www_authenticate

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
            [Challenge("basic", {"realm": "x"})],
            id="token68-is-not-for-registries",
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
            [],
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


def test_challenge_fields() -> None:
    [challenge] = parse_www_authenticate([DOCKER_HUB])
    assert challenge.scheme == "bearer"
    assert challenge.params["realm"] == "https://auth.docker.io/token"
    assert challenge.params.get("service") == "registry.docker.io"
    assert challenge.params.get("missing") is None


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
