"""
HTTPS through ocicache's TLS transport (L{ocicache._web._bulk_tls}) with
a real client: a 64 MiB blob whole (a miss, then a hit hashed on the way in
the disk pool), a range of it, keep-alive requests on one connection (ALPN settles on
HTTP/1.1 for a client offering h2 first), and a client that hangs up
mid-transfer, which costs the daemon nothing it keeps
(no descriptor, no error) and stops nobody else.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable

import pytest

from ocitest import free_port, require_binary, wait_for
from ocitest.daemon import Daemon
from ocitest.images import Blob, Image
from ocitest.ops import PKI, make_pki

pytestmark = pytest.mark.integration


def _https_daemon(daemon_factory: Callable[..., Daemon], pki: PKI) -> tuple[Daemon, int]:
    port, tls_port = free_port(), free_port()
    daemon = daemon_factory(port=port, server_extra={"listen": [
        f"tcp:{port}:interface=127.0.0.1",
        f"ssl:{tls_port}:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1",
    ]})
    return daemon, tls_port


def _big(ocitest_images: dict[str, Image]) -> tuple[Image, Blob]:
    image = ocitest_images["big64"]
    return image, max(image.layers, key=lambda b: b.size)


def _committed(daemon: Daemon, blob: Blob) -> bool:
    hex_ = blob.digest.split(":", 1)[1]
    assert daemon.cache_dir is not None
    return os.path.exists(os.path.join(daemon.cache_dir, "blobs", "sha256", hex_[:2], hex_))


def _curl(pki: PKI, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([require_binary("curl"), "--silent", "--show-error", "--max-time", "60",
                           "--cacert", pki.ca_cert, *args, url], capture_output=True, timeout=90)


def _open_fds(daemon: Daemon) -> int:
    assert daemon.pid is not None
    return len(os.listdir(f"/proc/{daemon.pid}/fd"))


def test_a_big_blob_over_https_whole_and_ranged(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], tmp_path: os.PathLike[str]) -> None:
    pki = make_pki(str(tmp_path))
    daemon, tls_port = _https_daemon(daemon_factory, pki)
    image, blob = _big(ocitest_images)
    url = f"https://127.0.0.1:{tls_port}/v2/docker.io/{image.repo}/blobs/{blob.digest}"
    digest = blob.digest.split(":", 1)[1]

    miss = _curl(pki, url)
    assert miss.returncode == 0, miss.stderr
    assert len(miss.stdout) == blob.size and hashlib.sha256(miss.stdout).hexdigest() == digest
    wait_for(lambda: _committed(daemon, blob), timeout=30, what="the blob committed")

    hit = _curl(pki, url, "--dump-header", "-")
    assert hit.returncode == 0, hit.stderr
    head, _, body = hit.stdout.partition(b"\r\n\r\n")
    assert head.lower().startswith(b"http/1.1 200") and b"ocicache-cache: hit" in head.lower()
    assert len(body) == blob.size and hashlib.sha256(body).hexdigest() == digest

    start, end = 3 * 2**20 - 7, 9 * 2**20 + 5
    ranged = _curl(pki, url, "--header", f"Range: bytes={start}-{end}")
    assert ranged.returncode == 0, ranged.stderr
    assert ranged.stdout == body[start:end + 1]


def test_keep_alive_and_a_client_that_hangs_up_mid_transfer(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], tmp_path: os.PathLike[str]) -> None:
    pki = make_pki(str(tmp_path))
    daemon, tls_port = _https_daemon(daemon_factory, pki)
    image, blob = _big(ocitest_images)
    path = f"/v2/docker.io/{image.repo}/blobs/{blob.digest}"
    digest = blob.digest.split(":", 1)[1]
    context = ssl.create_default_context(cafile=pki.ca_cert)
    context.set_alpn_protocols(["h2", "http/1.1"])

    # Two whole bodies on one connection: the miss, then the hit.
    connection = http.client.HTTPSConnection("127.0.0.1", tls_port, context=context, timeout=60)
    connection.connect()
    assert isinstance(connection.sock, ssl.SSLSocket)
    assert connection.sock.selected_alpn_protocol() == "http/1.1"
    for _ in range(2):
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200 and hashlib.sha256(body).hexdigest() == digest
    connection.close()
    wait_for(lambda: _committed(daemon, blob), timeout=30, what="the blob committed")
    baseline = _open_fds(daemon)

    # Hang up after 3 MiB of a hit, with a reset rather than a TLS close.
    for _ in range(3):
        raw = socket.create_connection(("127.0.0.1", tls_port), timeout=60)
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        got = 0
        while got < 3 * 2**20:
            chunk = tls.recv(1 << 16)
            assert chunk
            got += len(chunk)
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()

    # Nobody else is stopped, and nothing of the gone clients is kept.
    again = _curl(pki, f"https://127.0.0.1:{tls_port}{path}")
    assert again.returncode == 0 and hashlib.sha256(again.stdout).hexdigest() == digest
    wait_for(lambda: _open_fds(daemon) <= baseline, timeout=15, what="the gone clients' descriptors closed")
    assert daemon.running
    log = daemon.log_text()
    assert "Traceback" not in log and "Unhandled" not in log
