"""
Tag lists are the upstream's, complete, and survive the upstream going
away (issue 11, "tags/list, complete and cached"):

  - with the upstream stopped (connections refused, not a 503) the last
    list is served from the cache;
  - C{n} and C{last} are passed through, and the upstream's C{Link} points
    back at ocicache under the name the client used;
  - the list holds tags never pulled through ocicache: it is never a list
    of only the cached tags (Harbor's goharbor/harbor#15513).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable

import pytest

from ocitest import http_request
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import Image
from ocitest.referrers import ReferrersUpstream
from ocitest.registry import Registry, push_image

pytestmark = pytest.mark.integration


def _tags(body: bytes) -> list[str]:
    tags = json.loads(body)["tags"]
    assert isinstance(tags, list)
    return tags


def test_a_stopped_upstream_gets_the_cached_tag_list(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = daemon_factory(tag_ttl="1s")
    url = daemon.url + f"/v2/docker.io/{image.repo}/tags/list"
    status, _, before = http_request(url)
    assert status == 200 and image.tag in _tags(before)
    time.sleep(1.2)  # past the TTL: the next request asks the upstream
    hop.stop()
    try:
        status, headers, body = http_request(url)
        assert status == 200 and body == before
        assert headers["content-type"] == "application/json"
        log = daemon.log_text()
        assert "Serving a stale tag list" in log
        assert "ConnectionRefusedError" in log  # refused, not answered
        # The containerd form, too: the same page.
        status, _, body = http_request(daemon.url + f"/v2/{image.repo}/tags/list?ns=docker.io")
        assert status == 200 and body == before
    finally:
        hop.start()
    assert hop.count("GET", "/tags/list") == 1, hop.summary()


def test_n_and_last_are_passed_to_distribution(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["oci"]
    status, _, body = http_request(daemon.url + f"/v2/docker.io/{image.repo}/tags/list?n=1&last=a")
    assert status == 200 and _tags(body)
    seen = [urllib.parse.parse_qs(r.query) for r in hop.matching("GET", "/tags/list")]
    assert seen == [{"n": ["1"], "last": ["a"]}], hop.summary()


def test_pages_are_the_upstreams_and_the_link_points_back(
        daemon_factory: Callable[..., Daemon]) -> None:
    # distribution 2.8 ignores n and last and sends no Link: an upstream
    # that pages, as the spec's "Listing Tags" describes.
    api = ReferrersUpstream().start()
    try:
        api.tags["library/paged"] = ["a", "b", "c", "d", "e"]
        daemon = daemon_factory(upstreams=[Upstream("docker.io", api.url, default=True)])
        for first, name, ns in (("/v2/docker.io/library/paged/tags/list?n=2", "docker.io/library/paged", None),
                                ("/v2/paged/tags/list?n=2&ns=docker.io", "paged", "docker.io")):
            target: str | None = first
            pages: list[list[str]] = []
            while target is not None:
                status, headers, body = http_request(daemon.url + target)
                assert status == 200, body
                pages.append(_tags(body))
                link = headers.get("link")
                target = None
                if link is not None:
                    assert link.endswith('>; rel="next"'), link
                    target = link[1:link.index(">")]
                    parts = urllib.parse.urlsplit(target)
                    assert parts.path == f"/v2/{name}/tags/list", link
                    query = urllib.parse.parse_qs(parts.query)
                    assert query["n"] == ["2"] and query["last"] == [pages[-1][-1]], link
                    assert query.get("ns") == ([ns] if ns else None), link
            assert pages == [["a", "b"], ["c", "d"], ["e"]]
        # Each page was asked of the upstream once, with the client's n and
        # last; the second walk found them all cached.
        assert [query for query in api.queries("/tags/list")] == [
            {"n": ["2"]}, {"n": ["2"], "last": ["b"]}, {"n": ["2"], "last": ["d"]}]
    finally:
        api.stop()


def test_the_list_holds_tags_never_pulled_through_ocicache(
        ocitest_images: dict[str, Image], upstream: Registry, daemon: Daemon) -> None:
    repo = "library/ocitest-tags-complete"
    image = ocitest_images["oci"]
    push_image(upstream.url, image, repo=repo, tag="pulled")
    status, _, _ = http_request(daemon.url + f"/v2/docker.io/{repo}/manifests/pulled",
                                headers={"Accept": image.manifest_media_type})
    assert status == 200
    # Pushed straight to the upstream: ocicache has never seen it.
    push_image(upstream.url, image, repo=repo, tag="never-pulled")
    status, _, body = http_request(daemon.url + f"/v2/docker.io/{repo}/tags/list")
    assert status == 200
    assert sorted(_tags(body)) == ["never-pulled", "pulled"]
    _, _, direct = http_request(upstream.url + f"/v2/{repo}/tags/list")
    assert json.loads(body) == json.loads(direct)
