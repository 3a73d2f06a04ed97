"""
Tag lists through the real daemon: one upstream request for many clients
at once, none within the TTL, and the last list served when the upstream
fails.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from ocitest import http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Image

pytestmark = pytest.mark.integration


def _url(daemon: Daemon, image: Image) -> str:
    return daemon.url + f"/v2/docker.io/{image.repo}/tags/list"


def test_concurrent_tag_lists_cost_one_upstream_request(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["oci"]
    hop.delay = 0.5
    results: list[tuple[int, bytes]] = []

    def client() -> None:
        status, _, body = http_request(_url(daemon, image))
        results.append((status, body))

    threads = [threading.Thread(target=client) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 20
    assert {status for status, _ in results} == {200}
    assert len({body for _, body in results}) == 1
    assert image.tag in json.loads(results[0][1])["tags"]
    hop.wait_idle()
    assert hop.count("GET", "/tags/list") == 1, hop.summary()
    # Within the TTL: no upstream request at all.
    hop.delay = 0.0
    assert http_request(_url(daemon, image))[0] == 200
    assert hop.count("GET", "/tags/list") == 1, hop.summary()


def test_a_failing_upstream_gets_the_last_tag_list(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = daemon_factory(tag_ttl="1s")
    status, _, before = http_request(_url(daemon, image))
    assert status == 200
    time.sleep(1.2)  # past the TTL: the next request asks the upstream
    hop.down = True
    status, headers, body = http_request(_url(daemon, image))
    assert status == 200 and body == before
    assert hop.count("GET", "/tags/list") == 2, hop.summary()
    # A page not seen before has nothing to fall back on: the upstream's
    # failure is passed on, as a 502.
    status, _, body = http_request(_url(daemon, image) + "?n=1")
    assert status == 502 and b"UPSTREAM_UNAVAILABLE" in body
    assert hop.count("GET", "/tags/list") == 3, hop.summary()
    assert "Serving a stale tag list" in daemon.log_text()
