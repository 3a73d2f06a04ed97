"""
Client-triggered upstream work is bounded: many clients that open cold
blob GETs and hang up early cause at most the configured number of
concurrent upstream downloads, most are abandoned, nothing partial is
committed; past the queue, clients get 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable

import pytest

from ocitest import free_port, http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Blob
from ocitest.ops import metric_value, scrape
from ocitest.registry import Registry, push_blob

pytestmark = pytest.mark.integration

REPO = "library/ocitest-hangups"
COUNT = 40
SIZE = 4 << 20
CLIENTS = 200


@pytest.fixture(scope="module")
def blobs(upstream: Registry) -> list[Blob]:
    made = []
    for i in range(COUNT):
        blob = Blob.from_bytes(random.Random(f"hangup-{i}").randbytes(SIZE), MEDIA.OCI_LAYER)
        push_blob(upstream.url, REPO, blob)
        made.append(blob)
    return made


def _read_then_hang_up(daemon: Daemon, blob: Blob, want: int) -> int:
    got = 0
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as conn:
        conn.sendall(f"GET /v2/docker.io/{REPO}/blobs/{blob.digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        while got < want:
            data = conn.recv(64 << 10)
            if not data:
                break
            got += len(data)
    return got


def _committed(daemon: Daemon) -> list[str]:
    assert daemon.cache_dir is not None
    root = os.path.join(daemon.cache_dir, "blobs", "sha256")
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == name, "a partial or bad blob was committed"
            found.append(name)
    return found


def test_hang_ups_cost_bounded_upstream_work(
        blobs: list[Blob], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    metrics_port = free_port()
    daemon = daemon_factory(cache_extra={"max_downloads": 4, "download_queue": 64, "abandon_after": "1s",
                                         "abandon_below": 0.75},
                            extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    hop.throttle = 1 << 20  # 4 s per blob: the downloads overlap, the clients leave after 1 MiB
    most = 0
    stop = threading.Event()

    def sample() -> None:
        # The daemon's own count of upstream downloads running: the hop
        # sees a cut connection only at its next write.
        nonlocal most
        while not stop.is_set():
            most = max(most, int(metric_value(scrape(metrics), "ocicache_inflight_downloads")))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    # 200 connections, five for each of 40 cold blobs, each gone after 1 MiB.
    clients = [threading.Thread(target=_read_then_hang_up, args=(daemon, blobs[i % COUNT], 1 << 20))
               for i in range(CLIENTS)]
    try:
        for client in clients:
            client.start()
        for client in clients:
            client.join(120)
        hop.wait_idle(timeout=60)
    finally:
        stop.set()
        sampler.join()
    assert 1 <= most <= 4, f"{most} upstream downloads at once"
    assert hop.count("GET", "/blobs/") == COUNT, hop.summary()
    time.sleep(1.5)  # every abandoned download has settled
    kept = _committed(daemon)
    assert len(kept) < COUNT // 2, f"{len(kept)} of {COUNT} kept: not abandoned"
    assert "abandoned" in daemon.log_text() or "nobody read it" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()
    # The daemon still serves them whole afterwards.
    hop.throttle = None
    status, _, body = http_request(daemon.url + f"/v2/docker.io/{REPO}/blobs/{blobs[0].digest}")
    assert status == 200 and body == blobs[0].data


def test_past_the_queue_clients_are_told_to_come_back(
        blobs: list[Blob], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    daemon = daemon_factory(cache_extra={"max_downloads": 1, "download_queue": 2})
    hop.throttle = 4 << 20
    statuses: list[tuple[int, dict[str, str]]] = []

    def fetch(blob: Blob) -> None:
        status, headers, _ = http_request(daemon.url + f"/v2/docker.io/{REPO}/blobs/{blob.digest}", timeout=60)
        statuses.append((status, headers))

    clients = [threading.Thread(target=fetch, args=(blob,)) for blob in blobs[:8]]
    for client in clients:
        client.start()
        time.sleep(0.05)
    for client in clients:
        client.join(90)
    refused = [headers for status, headers in statuses if status == 429]
    assert len([s for s, _ in statuses if s == 200]) >= 3
    assert refused, statuses
    assert all(int(headers["retry-after"]) >= 1 for headers in refused)
