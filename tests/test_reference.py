"""
Tests for L{ocicache._spec._reference}.
"""

from __future__ import annotations

import hashlib

import attrs
import pytest

from ocicache._spec._media_types import MANIFEST_MEDIA_TYPES
from ocicache._spec._reference import (
    Digest,
    InvalidDigest,
    InvalidName,
    InvalidReference,
    InvalidTag,
    parse_reference,
    validate_name,
    validate_tag,
)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
EMPTY_SHA512 = hashlib.sha512(b"").hexdigest()


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "0",
        "alpine",
        "library/alpine",
        "docker.io/library/alpine",
        "a/b/c/d/e/f",
        "my-repo",
        "my--repo",
        "my---repo",
        "my_repo",
        "my__repo",
        "my.repo",
        "a.b_c__d-e--f",
        "org/sub.team/image-name_v2",
        "123/456",
        "a" * 255,
        "/".join(["ab"] * 85),  # 254 characters
    ],
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/..",
        "../a",
        "a/../b",
        "a/./b",
        "%2e%2e",
        "a%2fb",
        "a%2Fb",
        "a%00b",
        "/a",
        "a/",
        "/",
        "a//b",
        "Alpine",
        "library/Alpine",
        "ALPINE",
        "a" * 256,
        "/".join(["ab"] * 86),  # 257 characters
        "abc\n",
        "\nabc",
        "a\nb",
        "abc\r",
        "a b",
        " abc",
        "abc ",
        "a\tb",
        "a\x00b",
        "\x00",
        "alpin\u00e9",
        "\u0430lpine",  # Cyrillic a
        "\uff41",  # fullwidth a
        "\u0661",  # Arabic-Indic digit one
        "a.",
        ".a",
        "a-",
        "-a",
        "a_",
        "_a",
        "a___b",
        "a._b",
        "a.-b",
        "a..b",
        "a:b",
        "a@b",
        "a?b",
        "a#b",
        "a\\b",
        "a+b",
        "a;b",
        "a/b:latest",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name(name)
    assert info.value.code == "NAME_INVALID"


def test_name_error_does_not_echo_input() -> None:
    hostile = "evil\r\nX-Injected: 1"
    with pytest.raises(InvalidName) as info:
        validate_name(hostile)
    assert "evil" not in str(info.value)
    assert str(info.value) == info.value.message


def test_long_hostile_name_is_fast() -> None:
    # A pathological input for a backtracking matcher; the length limit and
    # the disjoint alphabets keep it cheap.
    with pytest.raises(InvalidName):
        validate_name("a-" * 10_000 + "!")
    with pytest.raises(InvalidName):
        validate_name(("a" * 250) + "!")


@pytest.mark.parametrize(
    "tag",
    [
        "latest",
        "v1.2.3",
        "1.0",
        "_",
        "_private",
        "3.19-alpine",
        "A_B.c-D",
        "sha256-" + EMPTY_SHA256 + ".sig",
        "a" * 128,
    ],
)
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    [
        "",
        ".latest",
        "-latest",
        "a" * 129,
        "latest\n",
        "lat est",
        "latest/",
        "a/b",
        "..",
        "%2e%2e",
        "a%2fb",
        "lat\u00e9st",
        "a\x00",
        "a:b",
        "a@b",
        "a+b",
    ],
)
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(InvalidTag) as info:
        validate_tag(tag)
    assert info.value.code == "MANIFEST_INVALID"


@pytest.mark.parametrize(
    "text, algorithm, encoded",
    [
        ("sha256:" + EMPTY_SHA256, "sha256", EMPTY_SHA256),
        ("sha512:" + EMPTY_SHA512, "sha512", EMPTY_SHA512),
        ("sha256:" + "0" * 64, "sha256", "0" * 64),
    ],
)
def test_parse_digest(text: str, algorithm: str, encoded: str) -> None:
    digest = Digest.parse(text)
    assert digest == Digest(algorithm, encoded)
    assert digest.algorithm == algorithm
    assert digest.encoded == encoded
    assert digest.hex == encoded
    assert str(digest) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "sha256",
        "sha256:",
        ":" + EMPTY_SHA256,
        "sha256:" + EMPTY_SHA256[:63],
        "sha256:" + EMPTY_SHA256 + "0",
        "sha256:" + EMPTY_SHA256.upper(),
        "sha256:" + EMPTY_SHA256[:63] + "A",
        "sha256:" + EMPTY_SHA256[:63] + "g",
        "sha256:" + EMPTY_SHA256 + "\n",
        "sha256:" + EMPTY_SHA256 + " ",
        " sha256:" + EMPTY_SHA256,
        "SHA256:" + EMPTY_SHA256,
        "sha256:" + EMPTY_SHA256[:32] + ":" + EMPTY_SHA256[32:],
        "sha256:" + EMPTY_SHA256[:62] + "\u0661\u0662",
        "sha256:xyz",
        "sha256:../../../../etc/passwd",
        "sha256:%2e%2e",
        "sha512:" + EMPTY_SHA256,
        "sha512:" + EMPTY_SHA512[:127],
        "sha384:" + hashlib.sha384(b"").hexdigest(),
        "md5:" + hashlib.md5(b"").hexdigest(),
        "sha1:" + hashlib.sha1(b"").hexdigest(),
        "blake3:" + "0" * 64,
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        "sha256-:" + EMPTY_SHA256,
        "-sha256:" + EMPTY_SHA256,
        "sha..256:" + EMPTY_SHA256,
    ],
)
def test_invalid_digests(text: str) -> None:
    with pytest.raises(InvalidDigest) as info:
        Digest.parse(text)
    assert info.value.code == "DIGEST_INVALID"


def test_unsupported_algorithm_message() -> None:
    with pytest.raises(InvalidDigest, match="unsupported digest algorithm"):
        Digest.parse("md5:" + hashlib.md5(b"").hexdigest())


def test_constructor_validates() -> None:
    """
    A L{Digest} cannot be built around an invalid value, so C{encoded} is
    always safe to use as a file name.
    """
    with pytest.raises(InvalidDigest):
        Digest("sha256", "../" + EMPTY_SHA256[3:])
    with pytest.raises(InvalidDigest):
        Digest("md5", EMPTY_SHA256)


def test_digest_is_frozen_and_hashable() -> None:
    digest = Digest.parse("sha256:" + EMPTY_SHA256)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        digest.encoded = "0" * 64  # type: ignore[misc]
    assert {digest: 1}[Digest("sha256", EMPTY_SHA256)] == 1
    assert digest != Digest("sha256", "0" * 64)


@pytest.mark.parametrize(
    "algorithm, expected", [("sha256", EMPTY_SHA256), ("sha512", EMPTY_SHA512)]
)
def test_hasher(algorithm: str, expected: str) -> None:
    digest = Digest(algorithm, expected)
    first = digest.hasher()
    second = digest.hasher()
    assert first is not second
    first.update(b"x")
    assert second.hexdigest() == digest.hex
    assert first.hexdigest() != digest.hex


def test_parse_reference_digest() -> None:
    result = parse_reference("sha256:" + EMPTY_SHA256)
    assert result == Digest("sha256", EMPTY_SHA256)


def test_parse_reference_tag() -> None:
    assert parse_reference("latest") == "latest"


@pytest.mark.parametrize(
    "text, error",
    [
        ("sha256:xyz", InvalidDigest),
        ("md5:" + "0" * 32, InvalidDigest),
        ("latest:", InvalidDigest),
        ("", InvalidTag),
        ("..", InvalidTag),
        ("latest\n", InvalidTag),
        ("a/b", InvalidTag),
    ],
)
def test_parse_reference_invalid(
    text: str, error: type[InvalidReference]
) -> None:
    with pytest.raises(error):
        parse_reference(text)


def test_errors_are_value_errors() -> None:
    for error in (InvalidName, InvalidDigest, InvalidTag):
        assert issubclass(error, InvalidReference)
        assert issubclass(error, ValueError)


def test_manifest_media_types() -> None:
    assert set(MANIFEST_MEDIA_TYPES) == {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
    assert len(MANIFEST_MEDIA_TYPES) == 4
