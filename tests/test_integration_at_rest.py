"""
Bytes at rest are re-verified: a blob corrupted on disk is found by the
background scrub without anyone running C{ocicache verify}, and a hit read
through Python anyway (TLS) is hashed on the way and cut short of its last
byte on a mismatch; either way the bad copy is quarantined and the next
client gets the right bytes, fetched again.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable

import pytest

from ocitest import free_port, http_request, require_binary, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Blob, Image
from ocitest.ops import PKI, make_pki, metric_value, scrape

pytestmark = pytest.mark.integration


def _blob_path(daemon: Daemon, blob: Blob) -> str:
    hex_ = blob.digest.split(":", 1)[1]
    assert daemon.cache_dir is not None
    return os.path.join(daemon.cache_dir, "blobs", "sha256", hex_[:2], hex_)


def _corrupt(path: str) -> None:
    """Flip one byte in the middle, keeping the length: bit rot."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _big(ocitest_images: dict[str, Image]) -> tuple[Image, Blob]:
    image = ocitest_images["big1"]
    return image, max(image.layers, key=lambda b: b.size)


def test_the_scrub_finds_a_corrupt_blob(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    metrics_port = free_port()
    daemon = daemon_factory(extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    image, blob = _big(ocitest_images)
    url = daemon.url + f"/v2/docker.io/{image.repo}/blobs/{blob.digest}"
    assert http_request(url)[0] == 200
    path = _blob_path(daemon, blob)
    wait_for(lambda: os.path.exists(path), timeout=10, what="the blob committed")
    _corrupt(path)

    def quarantined() -> bool:
        return metric_value(scrape(metrics), "ocicache_corrupt_blobs_total", found_by="scrub") == 1

    wait_for(quarantined, timeout=30, what="the scrub to find the corrupt blob")
    assert not os.path.exists(path)
    assert daemon.cache_dir is not None
    assert os.listdir(os.path.join(daemon.cache_dir, "quarantine")) == [blob.digest.replace(":", "-")]
    assert metric_value(scrape(metrics), "ocicache_scrubbed_bytes_total") >= blob.size
    # The next client gets the right bytes, fetched again.
    status, _, body = http_request(url)
    assert status == 200 and body == blob.data
    hop.wait_idle()
    assert hop.count("GET", blob.digest) == 2, hop.summary()
    assert "Traceback" not in daemon.log_text()


def test_a_corrupt_hit_over_tls_is_cut_short(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop,
        tmp_path: os.PathLike[str]) -> None:
    pki: PKI = make_pki(str(tmp_path))
    port, tls_port = free_port(), free_port()
    daemon = daemon_factory(port=port, server_extra={"listen": [
        f"tcp:{port}:interface=127.0.0.1",
        f"ssl:{tls_port}:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1",
    ]})
    image, blob = _big(ocitest_images)
    path_part = f"/v2/docker.io/{image.repo}/blobs/{blob.digest}"
    assert http_request(daemon.url + path_part)[0] == 200
    path = _blob_path(daemon, blob)
    wait_for(lambda: os.path.exists(path), timeout=10, what="the blob committed")
    _corrupt(path)

    def curl() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([require_binary("curl"), "--silent", "--max-time", "30", "--cacert", pki.ca_cert,
                               f"https://127.0.0.1:{tls_port}{path_part}"], capture_output=True, timeout=60)

    cut = curl()
    # curl 18 "transfer closed with outstanding read data remaining", or 56
    # "failure in receiving network data": the TLS connection was aborted.
    assert cut.returncode in (18, 56), (cut.returncode, cut.stderr)
    assert len(cut.stdout) < blob.size
    wait_for(lambda: not os.path.exists(path), timeout=10, what="the corrupt blob quarantined")
    again = curl()
    assert again.returncode == 0
    assert hashlib.sha256(again.stdout).hexdigest() == blob.digest.split(":", 1)[1]
