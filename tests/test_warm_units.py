"""
The pure parts of warming and pinning: image references, platforms, an
image's closure read from manifest bytes, the [[warm]] and protect_recent
config keys, and where the CLI finds the daemon.
"""

from __future__ import annotations

import json

import pytest

from ocicache._daemon._daemon_client import UsageError, listen_url
from ocicache._ops._config import ConfigError, parse_config
from ocicache._spec._closure import Platform, host_platform, image_blobs, index_manifests, select_platforms
from ocicache._spec._reference import Digest, InvalidReference, parse_image_reference

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


@pytest.mark.parametrize(("text", "registry", "repository", "reference"), [
    ("alpine", None, "alpine", "latest"),
    ("library/alpine:3.20", None, "library/alpine", "3.20"),
    ("docker.io/library/alpine:3.20", "docker.io", "library/alpine", "3.20"),
    ("localhost/team/app", "localhost", "team/app", "latest"),
    ("registry.internal:5000/team/app:v1", "registry.internal:5000", "team/app", "v1"),
    (f"ghcr.io/a/b@{A}", "ghcr.io", "a/b", Digest.parse(A)),
    (f"ghcr.io/a/b:v1@{A}", "ghcr.io", "a/b", Digest.parse(A)),
])
def test_image_references(text: str, registry: str | None, repository: str, reference: object) -> None:
    parsed = parse_image_reference(text)
    assert (parsed.registry, parsed.repository, parsed.reference) == (registry, repository, reference)


@pytest.mark.parametrize("text", ["", "UPPER", "a//b", "a/b:", "a/b:-x", "a/b@sha256:short", "ex ample/x",
                                  "bad_host.io:x/a", "a/../b"])
def test_bad_image_references(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_image_reference(text)


def test_platforms() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(Platform.parse("Linux/AMD64")) == "linux/amd64"
    for bad in ("linux", "linux/", "a/b/c/d", "linux/amd 64", "../x"):
        with pytest.raises(ValueError):
            Platform.parse(bad)
    assert Platform("linux", "arm64").matches(Platform("linux", "arm64", "v8"))
    assert not Platform("linux", "arm64", "v7").matches(Platform("linux", "arm64", "v8"))
    assert host_platform().os


def _index() -> bytes:
    return json.dumps({"manifests": [
        {"digest": A, "size": 10, "mediaType": "m", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": B, "size": 20, "mediaType": "m",
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": C, "size": 5, "mediaType": "m", "platform": {"os": "unknown", "architecture": "unknown"}},
        {"digest": "not a digest", "size": 1}, {"size": 1}, "junk",
    ]}).encode()


def test_only_the_requested_platforms_of_an_index() -> None:
    entries = index_manifests(_index())
    assert [str(e.digest) for e in entries] == [A, B, C]
    chosen = select_platforms(entries, [Platform("linux", "arm64")])
    assert [str(e.digest) for e in chosen] == [B]
    both = select_platforms(entries, [Platform("linux", "arm64"), Platform("linux", "amd64")])
    assert [str(e.digest) for e in both] == [A, B]  # the index's order
    assert select_platforms(entries, [Platform("windows", "amd64")]) == []
    assert index_manifests(b"not json") == [] and index_manifests(b"[]") == []


def test_an_image_manifests_blobs() -> None:
    body = json.dumps({"config": {"digest": A, "size": 3, "mediaType": "c"},
                       "layers": [{"digest": B, "size": 7}, {"digest": B, "size": 7}, {"digest": C, "size": -1}]})
    assert [(str(b.digest), b.size) for b in image_blobs(body.encode())] == [(A, 3), (B, 7)]
    assert image_blobs(_index()) == []


def test_warm_tables() -> None:
    config = parse_config({"warm": [{"refs": ["alpine", "ghcr.io/a/b:v1"], "platforms": ["linux/arm64"],
                                     "every": "1h", "pin": True}, {"refs": ["quay.io/x/y"]}]}, {})
    first, second = config.warm
    assert first.refs == ("alpine", "ghcr.io/a/b:v1") and first.platforms == (Platform("linux", "arm64"),)
    assert (first.every, first.pin) == (3600.0, True)
    assert (second.every, second.pin, second.platforms) == (None, False, (host_platform(),))
    assert parse_config({}, {}).warm == ()


@pytest.mark.parametrize(("table", "message"), [
    ({}, "warm[0].refs: required"),
    ({"refs": []}, "warm[0].refs: required"),
    ({"refs": [3]}, "warm[0].refs[0]: expected a string"),
    ({"refs": ["NOPE"]}, "warm[0].refs[0]: 'NOPE' is not an image reference"),
    ({"refs": ["nowhere.example/a:b"]}, "warm[0].refs[0]: no [[upstream]] is named 'nowhere.example'"),
    ({"refs": ["alpine"], "platforms": []}, "warm[0].platforms: expected a non-empty list"),
    ({"refs": ["alpine"], "platforms": ["linux"]}, "warm[0].platforms[0]: 'linux' is not a platform"),
    ({"refs": ["alpine"], "every": "0s"}, "warm[0].every: must be positive"),
    ({"refs": ["alpine"], "pin": "yes"}, "warm[0].pin: expected true or false"),
    ({"refs": ["alpine"], "evry": "1h"}, "warm[0]: unknown key(s): evry"),
])
def test_bad_warm_tables(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"warm": [table]}, {})
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_warm_ref_without_registry_needs_a_default_upstream() -> None:
    with pytest.raises(ConfigError, match=r"warm\[0\].refs\[0\]: 'alpine' names no registry"):
        parse_config({"upstream": [{"name": "ghcr.io", "url": "https://ghcr.io"}], "warm": [{"refs": ["alpine"]}]},
                     {})


def test_protect_recent() -> None:
    assert parse_config({}, {}).cache.protect_recent == 3600.0
    assert parse_config({"cache": {"protect_recent": "0s"}}, {}).cache.protect_recent == 0.0
    with pytest.raises(ConfigError, match="cache.protect_recent: "):
        parse_config({"cache": {"protect_recent": "soon"}}, {})


def test_where_the_cli_finds_the_daemon() -> None:
    assert listen_url("tcp:5000:interface=127.0.0.1") == "http://127.0.0.1:5000"
    assert listen_url("tcp:5000") == "http://127.0.0.1:5000"
    assert listen_url("tcp6:5000:interface=\\:\\:") == "http://[::1]:5000"
    assert listen_url("tcp:port=9402:interface=10.0.0.1") == "http://10.0.0.1:9402"
    assert listen_url("ssl:5443:privateKey=k.pem:certKey=c.pem") == "https://127.0.0.1:5443"
    for unusable in ("systemd:domain=INET:index=0", "unix:/run/ocicache.sock", "tcp:interface=x"):
        with pytest.raises(UsageError):
            listen_url(unusable)
