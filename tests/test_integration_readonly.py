"""
A cache directory that becomes read-only while the daemon runs (a
remounted filesystem): clients are still served, by pass-through, with no
5xx for what the upstream can answer; C{/readyz} says 503; the log has one
warning, not one per request, and no traceback.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from ocitest import free_port, http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def read_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], None]]:
    """Remount a directory read-only, in place; undone afterwards."""
    mounted: list[str] = []

    def make(path: str) -> None:
        bind = _mount("--bind", path, path)
        if bind.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {bind.stderr.strip()}")
        mounted.append(path)
        ro = _mount("-o", "remount,ro,bind", path)
        assert ro.returncode == 0, ro.stderr

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


def test_a_cache_made_read_only_is_served_by_pass_through(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop,
        read_only: Callable[[str], None]) -> None:
    metrics_port = free_port()
    daemon = daemon_factory(extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
    ready = f"http://127.0.0.1:{metrics_port}/readyz"
    warm, cold = ocitest_images["oci"], ocitest_images["team"]
    warm_repo = f"/v2/docker.io/{warm.repo}"
    # Something cached before, to be served from the store afterwards.
    assert http_request(daemon.url + f"{warm_repo}/manifests/{warm.reference}", headers={"Accept": ACCEPT})[0] == 200
    for blob in warm.blobs:
        assert http_request(daemon.url + f"{warm_repo}/blobs/{blob.digest}")[0] == 200
    assert http_request(ready)[0] == 200
    assert daemon.cache_dir is not None
    read_only(daemon.cache_dir)

    for _ in range(3):
        cold_repo = f"/v2/docker.io/{cold.repo}"
        status, headers, body = http_request(daemon.url + f"{cold_repo}/manifests/{cold.reference}",
                                             headers={"Accept": ACCEPT})
        assert status == 200 and body == cold.manifest_bytes
        for blob in cold.blobs:
            status, _, body = http_request(daemon.url + f"{cold_repo}/blobs/{blob.digest}")
            assert status == 200, (status, body[:300])
            assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
        for blob in warm.blobs:
            status, _, body = http_request(daemon.url + f"{warm_repo}/blobs/{blob.digest}")
            assert status == 200 and body == blob.data
    status, _, body = http_request(ready)
    assert status == 503 and b"not writable" in body

    log = daemon.log_text()
    assert log.count("The cache disk is failing") == 1, log[-3000:]
    for marker in ("Traceback", "Unhandled", "Unexpected error"):
        assert marker not in log, log[-3000:]
    statuses = [int(m.group(1)) for m in re.finditer(r"access#info\] \S+ \S+ (\d{3}) ", log)]
    assert statuses and not [s for s in statuses if s >= 500], statuses


def test_a_cache_directory_that_vanishes_is_served_by_pass_through(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    metrics_port = free_port()
    daemon = daemon_factory(extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
    image = ocitest_images["team"]
    repo = f"/v2/docker.io/{image.repo}"
    assert daemon.cache_dir is not None
    shutil.rmtree(daemon.cache_dir)
    for _ in range(2):
        status, _, body = http_request(daemon.url + f"{repo}/manifests/{image.reference}", headers={"Accept": ACCEPT})
        assert status == 200 and body == image.manifest_bytes
        for blob in image.blobs:
            status, _, body = http_request(daemon.url + f"{repo}/blobs/{blob.digest}")
            assert status == 200, (status, body[:300])
            assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
    assert http_request(f"http://127.0.0.1:{metrics_port}/readyz")[0] == 503
    log = daemon.log_text()
    assert log.count("The cache disk is failing") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
