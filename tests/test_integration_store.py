"""
The bounded, self-healing store, end to end: a real daemon under twistd,
a real distribution registry upstream behind the counting hop.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

import pytest

from ocitest import SRC_ROOT, http_request, temp_files, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Blob, Image, MiB, big_layer
from ocitest.registry import Registry, push_blob

pytestmark = pytest.mark.integration


def _blob_files(cache_dir: str) -> dict[str, int]:
    found: dict[str, int] = {}
    top = os.path.join(cache_dir, "blobs")
    for root, _, files in os.walk(top):
        for name in files:
            found[name] = os.path.getsize(os.path.join(root, name))
    return found


def _get_sha256(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, int]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    try:
        conn.request("GET", parts.path, headers=headers or {})
        response = conn.getresponse()
        hasher = hashlib.sha256()
        total = 0
        while chunk := response.read(1 << 20):
            hasher.update(chunk)
            total += len(chunk)
        return response.status, "sha256:" + hasher.hexdigest(), total
    finally:
        conn.close()


def _ocicache(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ocicache", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _layer(image: Image) -> Blob:
    return image.layers[0]


@pytest.fixture(scope="module")
def extra_blobs(upstream: Registry) -> list[Blob]:
    """
    Two more distinct 64 MiB layers, so that the store really has to
    evict, not just refuse the 256 MiB one.
    """
    blobs = [big_layer(f"evict/{name}", 64 * MiB, MEDIA.OCI_LAYER) for name in ("a", "b")]
    for blob in blobs:
        push_blob(upstream.url, "library/ocitest-evict", blob)
    return blobs


def test_max_size_holds_and_every_pull_is_correct(
    daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image], extra_blobs: list[Blob],
) -> None:
    daemon = daemon_factory(max_size="150MiB")
    one, sixty_four, big = (_layer(ocitest_images[name]) for name in ("big1", "big64", "big256"))
    pulls = [
        ("ocitest-big1", one), ("ocitest-big64", sixty_four), ("ocitest-big256", big),
        ("ocitest-big64", sixty_four), ("ocitest-big1", one),
        # Beyond the sequence: two more distinct 64 MiB blobs force
        # evictions (1 + 64 + 64 + 64 > 150).
        ("ocitest-evict", extra_blobs[0]), ("ocitest-evict", extra_blobs[1]),
    ]
    for repo, blob in pulls:
        status, digest, length = _get_sha256(f"{daemon.url}/v2/{repo}/blobs/{blob.digest}")
        assert (status, digest, length) == (200, blob.digest, blob.size)
        stored = sum(_blob_files(daemon.cache_dir).values())
        assert stored <= 150 * MiB, f"blobs/ holds {stored} bytes after {repo}"
    # The commit (room made first, then the rename) follows the last byte.
    newest = extra_blobs[1].hex
    wait_for(lambda: newest in _blob_files(daemon.cache_dir), timeout=10, what="the newest blob kept")
    files = _blob_files(daemon.cache_dir)
    assert sum(files.values()) <= 150 * MiB
    assert big.hex not in files, "a blob larger than max_size must not be kept"
    # S3-FIFO: the blobs read twice (1 and 64 MiB) were promoted and kept;
    # the first extra blob, read once, was the one evicted.
    assert set(files) == {one.hex, sixty_four.hex, newest}
    result = _ocicache("verify", "--config", daemon.config_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 corrupt, 0 missing" in result.stdout


def test_kill_9_mid_download_leaves_nothing_partial(
    daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image], hop: Hop,
) -> None:
    blob = _layer(ocitest_images["big256"])
    hop.throttle = 64 * MiB  # bytes per second: the download takes ~4 s
    daemon = daemon_factory()
    cache_dir = daemon.cache_dir
    parts = urllib.parse.urlsplit(daemon.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    conn.request("GET", f"/v2/ocitest-big256/blobs/{blob.digest}")
    response = conn.getresponse()
    assert response.status == 200
    assert len(response.read(1 << 20)) == 1 << 20
    assert temp_files(cache_dir), "the download should be in progress"
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    assert daemon.proc.wait(timeout=10) == -signal.SIGKILL
    daemon.stop()  # reaped: a death this test caused, not a crash
    conn.close()
    assert blob.hex not in _blob_files(cache_dir), "a partial blob was committed"
    hop.throttle = None

    restarted = daemon_factory(cache_dir=cache_dir)
    assert temp_files(cache_dir) == [], "temp files survived the restart"
    assert blob.hex not in _blob_files(cache_dir)
    status, digest, length = _get_sha256(f"{restarted.url}/v2/ocitest-big256/blobs/{blob.digest}")
    assert (status, digest, length) == (200, blob.digest, blob.size)
    wait_for(lambda: blob.hex in _blob_files(cache_dir), timeout=30, what="the re-fetched blob committed")
    result = _ocicache("verify", "--config", restarted.config_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_verify_finds_a_corrupt_blob_and_repair_refetches_it(
    daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image], hop: Hop,
) -> None:
    blob = _layer(ocitest_images["big1"])
    daemon = daemon_factory()
    url = f"{daemon.url}/v2/ocitest-big1/blobs/{blob.digest}"
    assert _get_sha256(url) == (200, blob.digest, blob.size)
    path = os.path.join(daemon.cache_dir, "blobs", "sha256", blob.hex[:2], blob.hex)
    wait_for(lambda: os.path.exists(path), timeout=10, what="the blob committed")
    with open(path, "r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))

    found = _ocicache("verify", "--config", daemon.config_path)
    assert found.returncode == 1
    assert blob.hex in found.stdout and "CORRUPT" in found.stdout

    repaired = _ocicache("verify", "--repair", "--config", daemon.config_path)
    assert repaired.returncode == 1  # it found something, and says so
    assert not os.path.exists(path)
    clean = _ocicache("verify", "--config", daemon.config_path)
    assert clean.returncode == 0, clean.stdout

    fetched_before = hop.count("GET", blob.digest)
    assert _get_sha256(url) == (200, blob.digest, blob.size)
    assert hop.count("GET", blob.digest) == fetched_before + 1, "the repaired blob must be fetched again"


def test_stats_and_gc_report_the_store(
    daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image],
) -> None:
    blob = _layer(ocitest_images["big1"])
    daemon = daemon_factory()
    assert _get_sha256(f"{daemon.url}/v2/ocitest-big1/blobs/{blob.digest}")[0] == 200
    status, _, _ = http_request(f"{daemon.url}/v2/ocitest-oci/manifests/v1")
    assert status == 200
    wait_for(lambda: blob.hex in _blob_files(daemon.cache_dir), timeout=10, what="commit")
    time.sleep(0.5)  # the metadata rows are written just after the commit
    stats = _ocicache("stats", "--json", "--config", daemon.config_path)
    assert stats.returncode == 0, stats.stderr
    import json

    data = json.loads(stats.stdout)
    assert data["entries"]["blob"] == 1 and data["bytes"]["blob"] == blob.size
    assert data["entries"]["manifest"] >= 1 and data["entries"]["tag"] == 1
    assert data["biggest_repositories"][0]["repo"] == "library/ocitest-big1"
    gc = _ocicache("gc", "--config", daemon.config_path)
    assert gc.returncode == 0, gc.stderr
    assert "freed:" in gc.stdout


@pytest.fixture
def small_filesystem(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """
    A real 40 MiB tmpfs, so the disk fills for real.
    """
    mount_point = os.path.join(str(tmp_path), "small")
    os.makedirs(mount_point)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", mount_point],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({result.stderr.strip()}); "
                    "test_download_disk_full covers ENOSPC by injection")
    yield mount_point
    subprocess.run(["umount", "-l", mount_point], check=False)


def test_full_disk_mid_download_streams_through(
    small_filesystem: str, daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image],
) -> None:
    """
    Real ENOSPC (a 40 MiB tmpfs), not an injected one: the 64 MiB blob
    cannot fit, yet every client gets every byte, nothing is committed, and
    the daemon caches again once there is room.
    """
    cache_dir = os.path.join(small_filesystem, "cache")
    daemon = daemon_factory(cache_dir=cache_dir)
    blob = _layer(ocitest_images["big64"])
    url = f"{daemon.url}/v2/ocitest-big64/blobs/{blob.digest}"
    results: list[tuple[int, str, int]] = []
    threads = [threading.Thread(target=lambda: results.append(_get_sha256(url))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [(200, blob.digest, blob.size)] * 3
    assert blob.hex not in _blob_files(cache_dir)
    wait_for(lambda: temp_files(cache_dir) == [], timeout=10, what="temp files removed")
    assert daemon.proc is not None and daemon.proc.poll() is None
    with open(daemon.log_path) as f:
        log = f.read()
    assert log.count("The cache disk is failing") == 1

    small = _layer(ocitest_images["big1"])
    assert _get_sha256(f"{daemon.url}/v2/ocitest-big1/blobs/{small.digest}") == (200, small.digest, small.size)
    wait_for(lambda: small.hex in _blob_files(cache_dir), timeout=10, what="caching resumed")
