"""
Tests for L{ocicache._oci._routing.route}: which upstream, which repository,
which endpoint, and the distribution-spec error for everything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from ocicache._oci._routing import Endpoint, Route, route
from ocicache._ops._config import Config, parse_config
from ocicache._spec._errors import RegistryError
from ocicache._spec._reference import Digest

SHA = "sha256:" + "ab" * 32


def config(*upstreams: tuple[str, bool]) -> Config:
    return parse_config(
        {"upstream": [
            {"name": name, "url": f"https://{name.replace(':', '-')}.example", "default": default}
            for name, default in upstreams
        ]},
        environ={},
    )


HUB_DEFAULT = config(("docker.io", True), ("ghcr.io", False), ("localhost:5000", False))
GHCR_DEFAULT = config(("docker.io", False), ("ghcr.io", True))
NO_DEFAULT = config(("docker.io", False), ("ghcr.io", False))


def segments(path: str | bytes) -> list[bytes]:
    raw = path.encode("ascii") if isinstance(path, str) else path
    return raw.split(b"/")


def go(path: str | bytes, args: Mapping[bytes, Sequence[bytes]] | None = None,
       cfg: Config = HUB_DEFAULT) -> Route:
    return route(segments(path), args or {}, cfg)


def refused(path: str | bytes, args: Mapping[bytes, Sequence[bytes]] | None = None,
            cfg: Config = HUB_DEFAULT) -> RegistryError:
    with pytest.raises(RegistryError) as raised:
        go(path, args, cfg)
    return raised.value


# -- the three ways to name an upstream


def test_ns_query_selects_the_upstream() -> None:
    r = go("library/alpine/manifests/latest", {b"ns": [b"docker.io"]})
    assert r.upstream.name == "docker.io"
    assert r.repo == "library/alpine"
    assert r.client_name == "library/alpine"
    assert r.endpoint == Endpoint.MANIFESTS
    assert r.reference == "latest"
    assert r.ns == "docker.io"


def test_ns_query_is_case_insensitive_and_selects_a_non_default() -> None:
    r = go("owner/app/blobs/" + SHA, {b"ns": [b"GHCR.io"]})
    assert r.upstream.name == "ghcr.io"
    assert r.repo == "owner/app"
    assert r.endpoint == Endpoint.BLOBS
    assert r.reference == Digest.parse(SHA)
    assert r.ns == "ghcr.io"


def test_ns_query_on_docker_hub_adds_library() -> None:
    r = go("alpine/manifests/3.20", {b"ns": [b"docker.io"]})
    assert r.repo == "library/alpine"
    assert r.client_name == "alpine"


def test_ns_given_twice_is_refused() -> None:
    e = refused("alpine/manifests/latest", {b"ns": [b"docker.io", b"ghcr.io"]})
    assert (e.code, e.status) == ("NAME_INVALID", 400)


def test_host_prefix_selects_the_upstream() -> None:
    r = go("docker.io/library/alpine/manifests/latest")
    assert r.upstream.name == "docker.io"
    assert r.repo == "library/alpine"
    assert r.client_name == "docker.io/library/alpine"
    assert r.ns is None


def test_host_prefix_with_one_segment_on_docker_hub() -> None:
    r = go("docker.io/alpine/manifests/latest")
    assert r.repo == "library/alpine"


def test_host_prefix_for_another_upstream() -> None:
    r = go("ghcr.io/owner/app/tags/list")
    assert r.upstream.name == "ghcr.io"
    assert r.repo == "owner/app"
    assert r.endpoint == Endpoint.TAGS
    assert r.reference is None


def test_host_prefix_with_a_port() -> None:
    r = go("localhost:5000/team/app/manifests/v1")
    assert r.upstream.name == "localhost:5000"
    assert r.repo == "team/app"


def test_host_prefix_is_matched_case_insensitively() -> None:
    assert go("Docker.IO/library/alpine/manifests/latest").upstream.name == "docker.io"


def test_ns_wins_over_what_looks_like_a_host() -> None:
    # containerd with ns= sends the path without the host; a first
    # component with a dot is then just part of the name.
    r = go("docker.io/library/alpine/manifests/latest", {b"ns": [b"ghcr.io"]})
    assert r.upstream.name == "ghcr.io"
    assert r.repo == "docker.io/library/alpine"


def test_default_upstream_docker_hub_adds_library() -> None:
    r = go("alpine/manifests/latest")
    assert r.upstream.name == "docker.io"
    assert r.repo == "library/alpine"
    assert r.client_name == "alpine"


def test_default_upstream_docker_hub_keeps_two_segment_names() -> None:
    assert go("bitnami/redis/manifests/latest").repo == "bitnami/redis"


def test_non_docker_default_keeps_one_segment_names() -> None:
    r = go("alpine/manifests/latest", cfg=GHCR_DEFAULT)
    assert r.upstream.name == "ghcr.io"
    assert r.repo == "alpine"


def test_non_docker_host_prefix_keeps_one_segment_names() -> None:
    assert go("ghcr.io/alpine/manifests/latest").repo == "alpine"


# -- upstreams that are not configured


def test_unknown_ns() -> None:
    e = refused("alpine/manifests/latest", {b"ns": [b"evil.example"]})
    assert (e.code, e.status) == ("NAME_UNKNOWN", 404)
    assert e.detail == {"ns": "evil.example"}


def test_unknown_host_prefix() -> None:
    e = refused("evil.example/library/alpine/manifests/latest")
    assert (e.code, e.status) == ("NAME_UNKNOWN", 404)
    assert e.detail == {"registry": "evil.example"}


def test_no_default_upstream() -> None:
    e = refused("alpine/manifests/latest", cfg=NO_DEFAULT)
    assert (e.code, e.status) == ("NAME_UNKNOWN", 404)
    # The configured ones still work.
    assert go("docker.io/alpine/manifests/latest", cfg=NO_DEFAULT).repo == "library/alpine"


# -- endpoints


@pytest.mark.parametrize("path", [
    "alpine/blobs/uploads/",
    "alpine/blobs/uploads/some-uuid",
    "library/alpine/blobs/uploads",
    "docker.io/library/alpine/blobs/uploads/x/y",
    "a/blobs/uploads/manifests/latest",
])
def test_uploads_are_unsupported(path: str) -> None:
    e = refused(path)
    assert (e.code, e.status) == ("UNSUPPORTED", 405)
    assert (b"allow", b"GET, HEAD") in e.headers


@pytest.mark.parametrize("path", [
    "alpine",
    "alpine/manifests",
    "manifests/latest",
    "alpine/tags/lists",
    "alpine/manifests/latest/",
])
def test_not_an_endpoint(path: str) -> None:
    e = refused(path)
    assert e.code == "UNSUPPORTED"
    assert e.status == 404


def test_name_with_components_named_like_endpoints() -> None:
    r = go("a/manifests/b/manifests/latest")
    assert r.repo == "a/manifests/b"
    assert r.endpoint == Endpoint.MANIFESTS
    assert r.reference == "latest"

    r = go("a/blobs/b/blobs/" + SHA)
    assert r.repo == "a/blobs/b"
    assert r.endpoint == Endpoint.BLOBS
    assert r.reference == Digest.parse(SHA)

    r = go("tags/list/tags/list")
    assert r.repo == "tags/list"
    assert r.endpoint == Endpoint.TAGS

    r = go("blobs/manifests/" + SHA)
    assert r.repo == "library/blobs"
    assert r.endpoint == Endpoint.MANIFESTS
    assert r.reference == Digest.parse(SHA)


def test_manifest_by_digest() -> None:
    r = go("library/alpine/manifests/" + SHA)
    assert r.reference == Digest.parse(SHA)


# -- hostile names


@pytest.mark.parametrize("path", [
    b"../manifests/latest",
    b"../etc/manifests/latest",
    b"./manifests/latest",
    b"a/../manifests/latest",
    b"a/../b/manifests/latest",
    b"a/./b/manifests/latest",
    b"docker.io/../manifests/latest",
    b"docker.io/../../etc/manifests/latest",
    b"%2e%2e/manifests/latest",
    b"a/%2e%2e/manifests/latest",
    b"a%2fb/manifests/latest",
    b"a%2Fb/manifests/latest",
    b"a%00/manifests/latest",
    b"Alpine/manifests/latest",
    b"library/ALPINE/manifests/latest",
    b"docker.io/Library/alpine/manifests/latest",
    b"a" * 256 + b"/manifests/latest",
    b"/".join([b"ab"] * 86) + b"/manifests/latest",
    b"/".join([b"a"] * 70) + b"/manifests/latest",
    b"caf\xc3\xa9/manifests/latest",
    b"\xff/manifests/latest",
    b"a/\x80b/manifests/latest",
    b"a//b/manifests/latest",
    b"/a/manifests/latest",
    b"a/ /manifests/latest",
    b"a b/manifests/latest",
    b"a\nb/manifests/latest",
    b"docker.io/manifests/latest",
    b"-a/manifests/latest",
    b"a_/manifests/latest",
])
def test_hostile_names_are_invalid(path: bytes) -> None:
    e = refused(path)
    assert (e.code, e.status) == ("NAME_INVALID", 400)


@pytest.mark.parametrize("raw", [
    [b"a/b", b"manifests", b"latest"],
    [b"docker.io/library/alpine", b"manifests", b"latest"],
    [b"../../etc", b"manifests", b"latest"],
    [b"library", b"a/../b", b"blobs", SHA.encode()],
    [b"%", b"manifests", b"latest"],
])
def test_decoded_slashes_and_percents_are_invalid(raw: list[bytes]) -> None:
    # twisted.web decodes each path segment: "%2f" arrives as a "/" inside
    # one, "%25" as a "%".  Neither may reach the name.
    with pytest.raises(RegistryError) as raised:
        route(raw, {}, HUB_DEFAULT)
    assert (raised.value.code, raised.value.status) == ("NAME_INVALID", 400)


def test_hostile_names_are_invalid_with_ns_too() -> None:
    for path in (b"../manifests/latest", b"a/../b/manifests/latest", b"%2e%2e/manifests/latest"):
        e = refused(path, {b"ns": [b"docker.io"]})
        assert (e.code, e.status) == ("NAME_INVALID", 400)


def test_name_of_exactly_255_characters_is_allowed() -> None:
    name = "a" * 255
    assert go(name + "/manifests/latest", cfg=GHCR_DEFAULT).repo == name


# -- references


@pytest.mark.parametrize("reference", [
    "latest",
    "sha256",
    "sha256:",
    "sha256:abc",
    "sha256:" + "AB" * 32,
    "sha256:" + "ab" * 33,
    "md5:" + "ab" * 16,
    "sha256:" + "ab" * 31 + "zz",
    "%73ha256:" + "ab" * 32,
    "sha256:..%2f..%2fevil",
    "sha256:" + "ab" * 32 + "%00",
])
def test_bad_blob_digests(reference: str) -> None:
    e = refused("library/alpine/blobs/" + reference)
    assert (e.code, e.status) == ("DIGEST_INVALID", 400)


@pytest.mark.parametrize("reference, code", [
    (b"sha256:../../evil", "DIGEST_INVALID"),
    (b"../../evil", "MANIFEST_INVALID"),
    (b"v%", "MANIFEST_INVALID"),
])
def test_decoded_references_keep_their_own_codes(reference: bytes, code: str) -> None:
    # As twisted.web delivers them, "%2f" decoded: the reference is judged
    # by its own grammar, not as a name.
    with pytest.raises(RegistryError) as raised:
        route([b"library", b"alpine", b"manifests", reference], {}, HUB_DEFAULT)
    assert (raised.value.code, raised.value.status) == (code, 400)


@pytest.mark.parametrize("reference", [
    "sha256:nothex",
    "sha512:" + "ab" * 32,
    "foo:bar",
])
def test_bad_manifest_digests(reference: str) -> None:
    e = refused("library/alpine/manifests/" + reference)
    assert (e.code, e.status) == ("DIGEST_INVALID", 400)


@pytest.mark.parametrize("reference", [
    "-latest",
    ".latest",
    "a" * 129,
    "tag!",
    "tag+1",
    "",
    "%2e%2e",
    "..%2f..%2fevil",
    "v%201",
])
def test_bad_tags(reference: str) -> None:
    e = refused("library/alpine/manifests/" + reference)
    assert (e.code, e.status) == ("MANIFEST_INVALID", 400)


def test_longest_tag_is_allowed() -> None:
    assert go("library/alpine/manifests/" + "a" * 128).reference == "a" * 128


def test_uppercase_tags_and_digest_with_sha512() -> None:
    assert go("library/alpine/manifests/V1.2_RC-3").reference == "V1.2_RC-3"
    sha512 = "sha512:" + "cd" * 64
    assert go("library/alpine/blobs/" + sha512).reference == Digest.parse(sha512)


# -- referrers (distribution-spec "Listing Referrers")


def test_referrers_route_by_subject_digest() -> None:
    r = go("docker.io/alpine/referrers/" + SHA, {b"artifactType": [b"application/spdx+json"]})
    assert r.endpoint == Endpoint.REFERRERS
    assert (r.upstream.name, r.repo, r.client_name) == ("docker.io", "library/alpine", "docker.io/alpine")
    assert r.reference == Digest.parse(SHA)
    assert r.params == (("artifactType", "application/spdx+json"),)


def test_referrers_pagination_is_kept_and_ns_is_not_a_filter() -> None:
    r = go("alpine/referrers/" + SHA, {b"ns": [b"docker.io"], b"n": [b"010"], b"last": [SHA.encode()]})
    assert r.ns == "docker.io"
    assert r.params == (("last", SHA), ("n", "10"))


def test_a_repository_may_have_a_component_called_referrers() -> None:
    r = go("team/referrers/manifests/latest")
    assert (r.endpoint, r.repo) == (Endpoint.MANIFESTS, "team/referrers")


@pytest.mark.parametrize(("path", "args", "code"), [
    ("alpine/referrers/latest", {}, "DIGEST_INVALID"),
    ("alpine/referrers/sha256:abc", {}, "DIGEST_INVALID"),
    ("alpine/referrers/" + SHA, {b"artifactType": [b"sbom"]}, "UNSUPPORTED"),
    ("alpine/referrers/" + SHA, {b"artifactType": [b"a/b; charset=utf-8"]}, "UNSUPPORTED"),
    ("alpine/referrers/" + SHA, {b"artifactType": [b"a/b\r\nx: y"]}, "UNSUPPORTED"),
    ("alpine/referrers/" + SHA, {b"artifactType": [b"a/b", b"c/d"]}, "UNSUPPORTED"),
    ("alpine/referrers/" + SHA, {b"artifactType": [b"a/" + b"b" * 200]}, "UNSUPPORTED"),
    ("alpine/referrers/" + SHA, {b"filter": [b"x"]}, "UNSUPPORTED"),
    ("alpine/referrers/" + SHA, {b"n": [b"0"]}, "PAGINATION_NUMBER_INVALID"),
    ("alpine/referrers/" + SHA, {b"n": [b"-1"]}, "PAGINATION_NUMBER_INVALID"),
    ("alpine/referrers/" + SHA, {b"last": [b"../x"]}, "PAGINATION_NUMBER_INVALID"),
    ("alpine/referrers/" + SHA, {b"last": [b"a" * 300]}, "PAGINATION_NUMBER_INVALID"),
])
def test_a_malformed_referrers_request_is_a_400(path: str, args: dict[bytes, list[bytes]], code: str) -> None:
    e = refused(path, args)
    assert (e.code, e.status) == (code, 400)
