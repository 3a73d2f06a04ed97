"""
Manifests that are right for every C{Accept}: a client asking for a tag
with a narrow C{Accept} gets what the upstream gives that C{Accept}, and
never changes what a client with the full C{Accept} gets, cold or warm,
before or after the tag's TTL (the cache-poisoning bug: one narrow client
replaced a tag's manifest list for everyone).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from ocitest import http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.registry import Registry, push_image

pytestmark = pytest.mark.integration

FULL = ", ".join(MEDIA.MANIFEST_TYPES)
NARROW = {
    "schema2": MEDIA.DOCKER_MANIFEST,
    "oci-manifest": MEDIA.OCI_MANIFEST,
    "lists": f"{MEDIA.DOCKER_LIST}, {MEDIA.DOCKER_MANIFEST}",
}
TTL = 1.0


@pytest.fixture(scope="module")
def schema2_tag(upstream: Registry, ocitest_images: dict[str, Image]) -> tuple[str, str]:
    """A tag pointing at a single Docker schema2 manifest."""
    child = ocitest_images["list"].children[0]
    push_image(upstream.url, child, repo=child.repo, tag="schema2")
    return child.repo, "schema2"


def _answer(url: str, accept: str, method: str = "GET") -> tuple[int, str | None, str | None, bytes]:
    status, headers, body = http_request(url, method=method, headers={"Accept": accept})
    if status != 200:
        return status, None, None, body
    return status, headers.get("docker-content-digest"), headers.get("content-type"), body


def _check(daemon: Daemon, upstream: Registry, repo: str, tag: str, accept: str) -> None:
    ours = daemon.url + f"/v2/docker.io/{repo}/manifests/{tag}"
    theirs = upstream.url + f"/v2/{repo}/manifests/{tag}"
    expected = _answer(theirs, accept)
    if expected[0] == 200 and (expected[2] or "") not in accept:
        # The upstream fell back to a type the client did not list
        # (distribution: signed schema 1): ocicache passes on only what
        # the client asked for, and has none of that.
        status, _, body = http_request(ours, headers={"Accept": accept})
        assert status == 404 and b"MANIFEST_UNKNOWN" in body, (status, body)
        assert http_request(ours, method="HEAD", headers={"Accept": accept})[0] == 404
        return
    got = _answer(ours, accept)
    assert got[:3] == expected[:3], (accept, got, expected)
    if expected[0] == 200:
        assert got[3] == expected[3]
    # HEAD agrees with GET: same digest, type and length.
    status, headers, _ = http_request(ours, method="HEAD", headers={"Accept": accept})
    assert status == expected[0]
    if status == 200:
        assert headers.get("docker-content-digest") == expected[1]
        assert headers.get("content-type") == expected[2]
        assert headers.get("content-length") == str(len(expected[3]))


@pytest.mark.parametrize("order", ["narrow-first", "full-first"])
@pytest.mark.parametrize("narrow", sorted(NARROW))
@pytest.mark.parametrize("name", ["list", "index", "schema2"])
def test_every_accept_gets_the_upstreams_answer(
        name: str, narrow: str, order: str, ocitest_images: dict[str, Image], upstream: Registry,
        schema2_tag: tuple[str, str], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    if name == "schema2":
        repo, tag = schema2_tag
    else:
        image = ocitest_images[name]
        repo, tag = image.repo, image.reference
    daemon = daemon_factory(tag_ttl=f"{TTL:g}s")
    accepts = [NARROW[narrow], FULL] if order == "narrow-first" else [FULL, NARROW[narrow]]
    for _phase in ("cold", "warm"):
        for accept in accepts:
            _check(daemon, upstream, repo, tag, accept)
    time.sleep(TTL * 1.2)  # past the TTL: both are revalidated upstream
    for accept in reversed(accepts):
        _check(daemon, upstream, repo, tag, accept)


def test_a_narrow_client_never_changes_what_a_full_client_gets(
        ocitest_images: dict[str, Image], upstream: Registry, daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["list"]
    url = daemon.url + f"/v2/docker.io/{image.repo}/manifests/{image.reference}"
    first = _answer(url, FULL)
    assert first[0] == 200 and first[1] == image.manifest_digest and first[2] == MEDIA.DOCKER_LIST
    for _ in range(3):
        narrow = _answer(url, MEDIA.DOCKER_MANIFEST)
        assert narrow[0] == 200 and narrow[2] == MEDIA.DOCKER_MANIFEST
        assert _answer(url, FULL) == first
