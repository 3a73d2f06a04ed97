"""
Blob bodies through sendfile(2) against the real daemon: byte-exact for
whole blobs and every Range form, on stored blobs and on blobs still
downloading; counted by C{ocicache_sendfile_bytes_total} on plain TCP, and
never used over TLS, where the streamer sends correct bytes instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Callable

import pytest

from ocitest import free_port, http_request, require_binary
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Blob, Image
from ocitest.ops import PKI, make_pki, metric_value, scrape

pytestmark = pytest.mark.integration


def _ranges(size: int) -> list[tuple[str | None, int, int]]:
    return [
        (None, 0, size),
        (f"bytes={size // 3}-", size // 3, size),
        (f"bytes=1000-{size // 2}", 1000, size // 2 + 1),
        (f"bytes=-{size // 4}", size - size // 4, size),
        ("bytes=0-0", 0, 1),
        (f"bytes={size - 1}-", size - 1, size),
    ]


def _metrics_daemon(daemon_factory: Callable[..., Daemon], **config: object) -> tuple[Daemon, str]:
    port = free_port()
    daemon = daemon_factory(extra_tables={"metrics": {"listen": f"tcp:{port}:interface=127.0.0.1"}}, **config)
    return daemon, f"http://127.0.0.1:{port}/metrics"


def _sent_by_sendfile(metrics_url: str) -> float:
    return metric_value(scrape(metrics_url), "ocicache_sendfile_bytes_total")


def _big(ocitest_images: dict[str, Image]) -> tuple[Image, Blob]:
    image = ocitest_images["big1"]
    return image, max(image.layers, key=lambda b: b.size)


@pytest.mark.parametrize("case", range(6))
def test_stored_blobs_byte_exact_through_sendfile(
        case: int, ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    daemon, metrics = _metrics_daemon(daemon_factory)
    image, blob = _big(ocitest_images)
    url = daemon.url + f"/v2/docker.io/{image.repo}/blobs/{blob.digest}"
    status, _, body = http_request(url)
    assert status == 200 and body == blob.data
    before = _sent_by_sendfile(metrics)
    header, first, end = _ranges(blob.size)[case]
    status, headers, body = http_request(url, headers={"Range": header} if header else {})
    assert status == (206 if header else 200)
    assert headers["content-length"] == str(end - first)
    assert body == blob.data[first:end]
    assert _sent_by_sendfile(metrics) - before == end - first


@pytest.mark.parametrize("case", range(6))
def test_inflight_blobs_byte_exact_through_sendfile(
        case: int, ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    """
    Clients of a download still in flight read the growing temp file with
    sendfile, and every Range form is exact.
    """
    daemon, metrics = _metrics_daemon(daemon_factory)
    image, blob = _big(ocitest_images)
    url = daemon.url + f"/v2/docker.io/{image.repo}/blobs/{blob.digest}"
    hop.throttle = 2 << 20  # about half a second for the 1 MiB blob
    header, first, end = _ranges(blob.size)[case]
    results: dict[str, tuple[int, bytes]] = {}

    def fetch(name: str, headers: dict[str, str]) -> None:
        status, _, body = http_request(url, headers=headers)
        results[name] = (status, body)

    threads = [threading.Thread(target=fetch, args=("whole", {})),
               threading.Thread(target=fetch, args=("ranged", {"Range": header} if header else {}))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results["whole"] == (200, blob.data)
    assert results["ranged"][0] == (206 if header else 200)
    assert results["ranged"][1] == blob.data[first:end]
    hop.wait_idle()
    assert hop.count("GET", blob.digest) == 1, hop.summary()
    assert _sent_by_sendfile(metrics) >= blob.size


def test_tls_takes_the_streamer_and_is_correct(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop,
        tmp_path: os.PathLike[str]) -> None:
    pki: PKI = make_pki(str(tmp_path))
    port, tls_port, metrics_port = free_port(), free_port(), free_port()
    daemon_factory(port=port, server_extra={"listen": [
        f"tcp:{port}:interface=127.0.0.1",
        f"ssl:{tls_port}:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1",
    ]}, extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    image, blob = _big(ocitest_images)
    target = f"https://127.0.0.1:{tls_port}/v2/docker.io/{image.repo}/blobs/{blob.digest}"
    for _ in ("cold", "warm"):
        for header, first, end in _ranges(blob.size):
            extra = ["--header", f"Range: {header}"] if header else []
            result = subprocess.run([require_binary("curl"), "--silent", "--show-error", "--max-time", "30",
                                     "--cacert", pki.ca_cert, *extra, target], capture_output=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(blob.data[first:end]).hexdigest()
    assert _sent_by_sendfile(metrics) == 0
