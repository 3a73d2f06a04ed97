"""
Negative caching through the real daemon, against distribution through
the counting hop: a client asking in a loop for a tag, a repository or a
digest the upstream does not have costs one upstream request per negative
TTL, and still gets the spec's 404 each time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import pytest

from ocitest import http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image, oci_image
from ocitest.registry import Registry, push_image

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)
LOOP = 50
TTL = 2.0
DIGEST_TTL = 1.0


def _daemon(daemon_factory: Callable[..., Daemon], ttl: float = TTL, digest_ttl: float = DIGEST_TTL) -> Daemon:
    return daemon_factory(cache_extra={"negative_ttl": f"{ttl:g}s", "negative_digest_ttl": f"{digest_ttl:g}s"})


def _code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


def _loop(url: str, code: str, methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
    """C{LOOP} requests, each answered 404 with C{code}."""
    for index in range(LOOP):
        method = methods[index % len(methods)]
        status, headers, body = http_request(url, method, headers={"Accept": ACCEPT})
        assert status == 404, (method, status, body)
        if method == "GET":
            assert _code(body) == code, body
        else:
            assert headers.get("content-type") == "application/json"


def _missing_name(what: str) -> str:
    return f"{what}-{os.getpid()}-{time.monotonic_ns()}"


def test_a_missing_tag_costs_one_upstream_request_per_ttl(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = _daemon(daemon_factory)
    tag = _missing_name("nosuch")
    url = daemon.url + f"/v2/docker.io/{image.repo}/manifests/{tag}"
    _loop(url, "MANIFEST_UNKNOWN")
    assert hop.count(path_contains=f"/manifests/{tag}") == 1, hop.summary()
    time.sleep(TTL * 1.1)
    _loop(url, "MANIFEST_UNKNOWN")
    assert hop.count(path_contains=f"/manifests/{tag}") == 2, hop.summary()
    # The same tag name in a repository that has it is not affected.
    status, _, body = http_request(daemon.url + f"/v2/docker.io/{image.repo}/manifests/{image.reference}",
                                   headers={"Accept": ACCEPT})
    assert status == 200 and body == image.manifest_bytes


def test_a_missing_repository_costs_one_upstream_request_per_ttl(
        daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    daemon = _daemon(daemon_factory)
    repo = f"library/ocitest-{_missing_name('norepo')}"
    tags = daemon.url + f"/v2/docker.io/{repo}/tags/list"
    _loop(tags, "NAME_UNKNOWN", ("GET",))
    assert hop.count("GET", f"{repo}/tags/list") == 1, hop.summary()
    manifest = daemon.url + f"/v2/docker.io/{repo}/manifests/v1"
    _loop(manifest, "MANIFEST_UNKNOWN")
    assert hop.count(path_contains=f"{repo}/manifests/v1") == 1, hop.summary()
    time.sleep(TTL * 1.1)
    _loop(tags, "NAME_UNKNOWN", ("GET",))
    assert hop.count("GET", f"{repo}/tags/list") == 2, hop.summary()


def test_a_missing_digest_is_remembered_for_the_shorter_ttl(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = _daemon(daemon_factory)
    digest = "sha256:" + os.urandom(32).hex()
    blob = daemon.url + f"/v2/docker.io/{image.repo}/blobs/{digest}"
    manifest = daemon.url + f"/v2/docker.io/{image.repo}/manifests/{digest}"
    _loop(blob, "BLOB_UNKNOWN")
    _loop(manifest, "MANIFEST_UNKNOWN")
    assert hop.count(path_contains=f"/blobs/{digest}") == 1, hop.summary()
    assert hop.count(path_contains=f"/manifests/{digest}") == 1, hop.summary()
    time.sleep(DIGEST_TTL * 1.2)
    _loop(blob, "BLOB_UNKNOWN")
    _loop(manifest, "MANIFEST_UNKNOWN")
    assert hop.count(path_contains=f"/blobs/{digest}") == 2, hop.summary()
    assert hop.count(path_contains=f"/manifests/{digest}") == 2, hop.summary()


def test_a_pushed_tag_is_found_once_its_404_expires(
        upstream: Registry, daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    daemon = _daemon(daemon_factory)
    tag = _missing_name("later")
    image = oci_image(repo="library/ocitest-later", tag=tag, seed=f"later-{tag}", sizes=(1000,))
    url = daemon.url + f"/v2/docker.io/{image.repo}/manifests/{tag}"
    assert http_request(url, headers={"Accept": ACCEPT})[0] == 404
    push_image(upstream.url, image)
    # Within the TTL the upstream is not asked again.
    assert http_request(url, headers={"Accept": ACCEPT})[0] == 404
    assert hop.count(path_contains=f"/manifests/{tag}") == 1, hop.summary()
    time.sleep(TTL * 1.1)
    status, headers, body = http_request(url, headers={"Accept": ACCEPT})
    assert status == 200 and body == image.manifest_bytes
    assert headers.get("docker-content-digest") == image.manifest_digest


def test_zero_turns_it_off(ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon],
                           hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = _daemon(daemon_factory, ttl=0, digest_ttl=0)
    tag = _missing_name("off")
    digest = "sha256:" + os.urandom(32).hex()
    for _ in range(5):
        status, _, body = http_request(daemon.url + f"/v2/docker.io/{image.repo}/manifests/{tag}",
                                       headers={"Accept": ACCEPT})
        assert status == 404 and _code(body) == "MANIFEST_UNKNOWN"
        status, _, body = http_request(daemon.url + f"/v2/docker.io/{image.repo}/blobs/{digest}")
        assert status == 404 and _code(body) == "BLOB_UNKNOWN"
    assert hop.count(path_contains=f"/manifests/{tag}") == 5, hop.summary()
    assert hop.count(path_contains=f"/blobs/{digest}") == 5, hop.summary()
