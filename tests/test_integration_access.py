"""
No blob leaks across repositories: a cached blob is served to a repository
only once the upstream has confirmed that repository holds it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from ocitest import SRC_ROOT, http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Blob, Image
from ocitest.registry import Registry, push_blob

pytestmark = pytest.mark.integration


def test_a_cached_blob_is_not_served_through_another_repository(
    daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image], hop: Hop,
) -> None:
    daemon = daemon_factory()
    blob = ocitest_images["oci"].layers[0]
    assert blob.digest not in {b.digest for b in ocitest_images["team"].all_blobs()}

    # The owner's repository fills the cache.
    status, _, body = http_request(f"{daemon.url}/v2/ocitest-oci/blobs/{blob.digest}")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest

    # Another repository asks for the same digest: the upstream is asked
    # whether team/app holds it (it does not), and the cached bytes are
    # not handed out.
    hop.reset()
    status, headers, body = http_request(f"{daemon.url}/v2/team/app/blobs/{blob.digest}")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert "docker-content-digest" not in headers, "an error must not claim the blob's digest"
    assert b"BLOB_UNKNOWN" in body
    assert hop.count("HEAD", f"/v2/team/app/blobs/{blob.digest}") == 1
    assert hop.count("GET") == 0

    # The owner still gets it from the cache, with no upstream request.
    hop.reset()
    status, _, body = http_request(f"{daemon.url}/v2/ocitest-oci/blobs/{blob.digest}")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
    assert hop.count() == 0


@pytest.fixture(scope="module")
def shared_blob(upstream: Registry, ocitest_images: dict[str, Image]) -> Blob:
    """
    A layer of library/ocitest-oci that team/app holds too.
    """
    blob = ocitest_images["oci"].layers[1]
    push_blob(upstream.url, "team/app", blob)
    return blob


def test_a_repository_that_holds_the_blob_is_served_from_cache_after_one_head(
    daemon_factory: Callable[..., Daemon], shared_blob: Blob, hop: Hop,
) -> None:
    """
    A blob two repositories hold is fetched once; the second repository
    costs one HEAD, once, and is then served from the cache.
    """
    daemon = daemon_factory()
    digest = shared_blob.digest
    assert http_request(f"{daemon.url}/v2/ocitest-oci/blobs/{digest}")[0] == 200
    hop.reset()
    for _ in range(3):
        status, _, body = http_request(f"{daemon.url}/v2/team/app/blobs/{digest}")
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert hop.count("HEAD", f"/v2/team/app/blobs/{digest}") == 1
    assert hop.count("GET") == 0


def test_the_cli_answers_version_and_refuses_a_missing_cache(tmp_path: object) -> None:
    env = {"PYTHONPATH": SRC_ROOT}
    from ocicache import __version__

    version = subprocess.run([sys.executable, "-m", "ocicache", "--version"], capture_output=True,
                             text=True, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"ocicache {__version__}"
    config = f"{tmp_path}/c.toml"
    with open(config, "w") as f:
        f.write(f'[cache]\ndir = "{tmp_path}/nowhere"\n')
    missing = subprocess.run([sys.executable, "-m", "ocicache", "verify", "--config", config],
                             capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"ocicache: no cache at {tmp_path}/nowhere"
    assert "Traceback" not in missing.stderr
