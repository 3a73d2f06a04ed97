"""
Memory stays bounded for every response kind with 1,000 concurrent slow
clients, and comes back once they leave (the daemon's RSS grew from 57 MB
to 207-241 MB with 500-1,000 parallel blob clients, and stayed there).
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable

import pytest

from ocitest import http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image

pytestmark = pytest.mark.integration

CLIENTS = 1000
MiB = 1 << 20


def _rss(daemon: Daemon) -> int:
    with open(f"/proc/{daemon.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


def _slow_clients(daemon: Daemon, requests: list[bytes], seconds: float, rss: Callable[[], int]) -> int:
    """
    Open one connection per request, send it, read a little from each now
    and then for C{seconds}, then hang up; the peak RSS seen meanwhile.
    """
    selector = selectors.DefaultSelector()
    conns = []
    for request in requests:
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        conn.connect(("127.0.0.1", daemon.port))
        conn.sendall(request)
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
        conns.append(conn)
    peak = rss()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                sock.recv(4096)  # a slow reader: a little at a time
            except (BlockingIOError, ConnectionError):
                pass
        peak = max(peak, rss())
        time.sleep(0.05)
    for conn in conns:
        selector.unregister(conn)
        conn.close()
    return peak


def test_a_thousand_slow_clients_then_none(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    daemon = daemon_factory(server_extra={"max_connections": 2 * CLIENTS, "max_connections_per_address": 0})
    big, small = ocitest_images["big1"], ocitest_images["oci"]
    blob = max(big.layers, key=lambda b: b.size)
    accept = ", ".join(MEDIA.MANIFEST_TYPES)
    paths = [
        f"/v2/docker.io/{big.repo}/blobs/{blob.digest}",
        f"/v2/docker.io/{small.repo}/manifests/{small.reference}",
        f"/v2/docker.io/{small.repo}/tags/list",
    ]
    for path in paths:  # warm: what is measured is serving, not fetching
        assert http_request(daemon.url + path, headers={"Accept": accept})[0] == 200
    time.sleep(0.5)
    idle = _rss(daemon)
    requests = [f"GET {paths[i % 3]} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n".encode()
                for i in range(CLIENTS)]
    peak = _slow_clients(daemon, requests, 3.0, lambda: _rss(daemon))
    # Gone: the daemon lets go of what they held.
    time.sleep(1.0)
    status, _, body = http_request(daemon.url + paths[0])
    assert status == 200 and body == blob.data
    after = _rss(daemon)
    assert peak - idle < 100 * MiB, f"peak {peak / MiB:.0f} MiB over an idle {idle / MiB:.0f} MiB"
    assert after - idle < 20 * MiB, f"{after / MiB:.0f} MiB after, {idle / MiB:.0f} MiB idle"
    assert "Traceback" not in daemon.log_text()
