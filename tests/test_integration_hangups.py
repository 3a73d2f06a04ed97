"""
Clients that hang up at any point: nothing is written after, and the
daemon's log has no traceback, no temp file and no descriptor is left
behind (issue: a client leaving during a manifest, tags or HEAD lookup
made the later C{request.finish()} raise).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest

from ocitest import http_request, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Image

pytestmark = pytest.mark.integration

SLOW = 1.0
"""Seconds the upstream takes to answer, so that the client leaves first."""


def _hang_up_during(daemon: Daemon, path: str, method: str = "GET") -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as conn:
        conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode("ascii"))
        time.sleep(SLOW / 4)
    # Closed while the daemon still waits for the upstream.


def _temp_descriptors(daemon: Daemon) -> list[str]:
    fd_dir = f"/proc/{daemon.pid}/fd"
    paths = []
    for name in os.listdir(fd_dir):
        try:
            paths.append(os.readlink(os.path.join(fd_dir, name)))
        except OSError:
            continue
    return [p for p in paths if os.path.join(daemon.cache_dir or "", "tmp") in p]


def _assert_quiet(daemon: Daemon) -> None:
    log = daemon.log_text()
    for marker in ("Traceback", "Unhandled", "Unexpected error", "CRITICAL"):
        assert marker not in log, log[-4000:]


def _routes(image: Image) -> list[tuple[str, str]]:
    blob = max(image.layers, key=lambda b: b.size)
    repo = f"/v2/docker.io/{image.repo}"
    return [
        ("GET", f"{repo}/manifests/{image.reference}"),
        ("HEAD", f"{repo}/manifests/{image.reference}"),
        ("GET", f"{repo}/manifests/{image.manifest_digest}"),
        ("GET", f"{repo}/tags/list"),
        ("HEAD", f"{repo}/blobs/{blob.digest}"),
        ("GET", f"{repo}/blobs/{blob.digest}"),
    ]


@pytest.mark.parametrize("route", range(6))
def test_hanging_up_while_the_upstream_answers_is_quiet(
        route: int, ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["oci"]
    method, path = _routes(image)[route]
    hop.delay = SLOW
    _hang_up_during(daemon, path, method)
    time.sleep(SLOW * 1.5)
    hop.wait_idle()
    hop.delay = 0.0
    # The daemon still answers that route, correctly.
    status, _, _ = http_request(daemon.url + path, method=method)
    assert status == 200
    wait_for(lambda: not _temp_descriptors(daemon), timeout=10, what="temp files closed")
    _assert_quiet(daemon)


def test_hanging_up_during_revalidation_is_quiet(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = daemon_factory(tag_ttl="1s")
    path = f"/v2/docker.io/{image.repo}/manifests/{image.reference}"
    assert http_request(daemon.url + path)[0] == 200
    time.sleep(1.2)  # past the tag's TTL: the next lookup revalidates upstream
    hop.delay = SLOW
    _hang_up_during(daemon, path)
    time.sleep(SLOW * 1.5)
    hop.wait_idle()
    assert hop.count("HEAD", image.reference) >= 1, hop.summary()
    _assert_quiet(daemon)


def test_hanging_up_mid_blob_leaves_nothing(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["big1"]
    blob = max(image.layers, key=lambda b: b.size)
    path = f"/v2/docker.io/{image.repo}/blobs/{blob.digest}"
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode("ascii"))
        conn.recv(64 << 10)
    hop.wait_idle()
    wait_for(lambda: not _temp_descriptors(daemon), timeout=20, what="temp files closed")
    status, _, body = http_request(daemon.url + path)
    assert status == 200 and body == blob.data
    _assert_quiet(daemon)
