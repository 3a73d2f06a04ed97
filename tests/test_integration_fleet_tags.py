"""
Tags and manifests shared by a fleet of real daemons (twistd) through one
real Redis (redis-server), in front of the real distribution behind the
counting hop: however many nodes are asked for a tag, the upstream sees
one manifest GET (a Docker Hub pull) for it and, once its C{tag_ttl} has
passed, one revalidation HEAD; with Redis gone every node still serves it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ocitest import http_request, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.redis import RedisServer
from test_integration_fleet import _fleet, _logged

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)
TTL = 2.0


def _manifest(daemon: Daemon, repo: str, reference: str, method: str = "GET",
              accept: str = ACCEPT) -> tuple[int, dict[str, str], bytes]:
    return http_request(f"{daemon.url}/v2/{repo}/manifests/{reference}", method, headers={"Accept": accept})


def _assert_manifest(answer: tuple[int, dict[str, str], bytes], image: Image) -> None:
    status, headers, body = answer
    assert status == 200, (status, body[:300])
    assert body == image.manifest_bytes
    assert "sha256:" + hashlib.sha256(body).hexdigest() == image.manifest_digest
    assert headers["docker-content-digest"] == image.manifest_digest
    assert headers["content-type"] == image.manifest_media_type


def _tag_requests(hop: Hop, image: Image, method: str) -> int:
    return hop.count(method, f"/manifests/{image.tag}")


def test_three_nodes_one_manifest_get_and_one_revalidation_head(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    image = ocitest_images["index"]
    child = image.children[0]
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 3, tag_ttl=f"{TTL:g}s")
    # A pull: the tag (an index), then one platform's manifest by digest.
    for daemon in daemons:
        _assert_manifest(_manifest(daemon, image.repo, image.reference), image)
        _assert_manifest(_manifest(daemon, child.repo, child.manifest_digest), child)
        hop.wait_idle()
    assert _tag_requests(hop, image, "GET") == 1, hop.summary()
    assert hop.count("GET", f"/manifests/{child.manifest_digest}") == 1, hop.summary()
    # node0's access proofs are shared too: no HEAD to show the repository holds the child.
    assert hop.count("HEAD") == 0, hop.summary()

    # The tag's TTL passes: the first node asked revalidates it, the others take its answer.
    time.sleep(TTL * 1.3)
    hop.reset()
    for daemon in daemons:
        _assert_manifest(_manifest(daemon, image.repo, image.reference), image)
        hop.wait_idle()
    assert _tag_requests(hop, image, "HEAD") == 1, hop.summary()
    assert hop.count("GET") == 0, hop.summary()


def test_nodes_asked_at_the_same_instant_cost_one_get_then_one_head(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    image = ocitest_images["oci"]
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 3, tag_ttl=f"{TTL:g}s")
    clients = 4 * len(daemons)

    def burst() -> None:
        # Each upstream request takes a second: every node is asked while
        # the first one's is in flight.
        hop.delay = 1.0
        start = threading.Barrier(clients)

        def client(node: int) -> tuple[int, dict[str, str], bytes]:
            start.wait()
            return _manifest(daemons[node], image.repo, image.reference)

        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(client, [n % len(daemons) for n in range(clients)]))
        hop.wait_idle()
        for answer in answers:
            _assert_manifest(answer, image)

    burst()
    assert (_tag_requests(hop, image, "GET"), _tag_requests(hop, image, "HEAD")) == (1, 0), hop.summary()
    time.sleep(TTL * 1.3)
    hop.reset()
    burst()
    assert (_tag_requests(hop, image, "GET"), _tag_requests(hop, image, "HEAD")) == (0, 1), hop.summary()


def test_with_redis_stopped_every_node_still_serves_tags(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    image = ocitest_images["oci"]
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 2, tag_ttl=f"{TTL:g}s")
    _assert_manifest(_manifest(daemons[0], image.repo, image.reference), image)
    redis_server.stop()
    for daemon in daemons:
        wait_for(_logged(daemon, "falling back to local singleflight"), 20, what="the fallback to be logged")
    hop.reset()
    # Each node on its own: node1 fetches the tag itself, node0 revalidates its own.
    started = time.monotonic()
    _assert_manifest(_manifest(daemons[1], image.repo, image.reference), image)
    time.sleep(TTL * 1.3)
    for daemon in daemons:
        _assert_manifest(_manifest(daemon, image.repo, image.reference), image)
        status, headers, _ = _manifest(daemon, image.repo, image.reference, method="HEAD")
        assert (status, headers["docker-content-digest"]) == (200, image.manifest_digest)
    # Redis in nobody's way: no command waited for its timeout.
    assert time.monotonic() - started < TTL * 1.3 + 3.0
    hop.wait_idle()
    assert _tag_requests(hop, image, "GET") == 1, hop.summary()
    assert _tag_requests(hop, image, "HEAD") == 2, hop.summary()
