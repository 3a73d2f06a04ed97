"""
TLS both ways: ocicache serving HTTPS on an C{ssl:} endpoint (checked with
curl), and ocicache verifying an HTTPS upstream (a docker-registry with
C{http.tls}) against a private CA, failing cleanly without it, and
skipping verification only when told to, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from ocicache import __version__
from ocitest import free_port, http_request, require_binary, temp_files
from ocitest.daemon import Daemon, Upstream
from ocitest.images import MEDIA
from ocitest.ops import PKI, AuxRegistry, make_pki
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([require_binary("curl"), "--silent", "--show-error", "--max-time", "30", *args],
                          capture_output=True, timeout=60)


def test_serves_https_on_an_ssl_endpoint(
    daemon_factory: Callable[..., Daemon], upstream: Registry, pki: PKI, tmp_path: os.PathLike[str]
) -> None:
    port, tls_port = free_port(), free_port()
    daemon_factory(port=port, server_extra={"listen": [
        f"tcp:{port}:interface=127.0.0.1",
        f"ssl:{tls_port}:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1",
    ]})
    image = upstream.images["oci"]
    base = f"https://127.0.0.1:{tls_port}"
    headers_file = os.path.join(str(tmp_path), "headers")

    result = _curl("--cacert", pki.ca_cert, "--dump-header", headers_file, "--header", f"Accept: {ACCEPT}",
                   f"{base}/v2/{image.repo}/manifests/{image.tag}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == image.manifest_bytes
    with open(headers_file) as f:
        headers = f.read().lower()
    assert headers.startswith("http/1.1 200")
    assert f"server: ocicache/{__version__}" in headers

    for blob in image.blobs:
        result = _curl("--cacert", pki.ca_cert, f"{base}/v2/{image.repo}/blobs/{blob.digest}")
        assert result.returncode == 0, result.stderr
        assert "sha256:" + hashlib.sha256(result.stdout).hexdigest() == blob.digest

    # A client that does not trust the CA refuses the certificate.
    result = _curl(f"{base}/v2/")
    assert result.returncode == 60, (result.returncode, result.stderr)


@pytest.fixture
def tls_registry(tmp_path: os.PathLike[str], upstream: Registry, pki: PKI) -> Iterator[AuxRegistry]:
    with AuxRegistry(os.path.join(str(tmp_path), "tls-registry"), upstream.storage, tls=pki) as registry:
        yield registry


def test_https_upstream_verified_with_ca_file(
    daemon_factory: Callable[..., Daemon], upstream: Registry, tls_registry: AuxRegistry, pki: PKI
) -> None:
    daemon = daemon_factory(upstreams=[Upstream("docker.io", tls_registry.url, default=True,
                                                extra={"ca_file": pki.ca_cert})])
    image = upstream.images["oci"]
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.tag}",
                                   headers={"Accept": ACCEPT})
    assert status == 200 and body == image.manifest_bytes
    blob = image.blobs[-1]
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/blobs/{blob.digest}")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
    assert "TLS certificate verification is OFF" not in daemon.log_text()


def test_https_upstream_unknown_ca_fails_cleanly(
    daemon_factory: Callable[..., Daemon], upstream: Registry, tls_registry: AuxRegistry
) -> None:
    daemon = daemon_factory(upstreams=[Upstream("docker.io", tls_registry.url, default=True)])
    image = upstream.images["oci"]
    for path in (f"/v2/{image.repo}/manifests/{image.tag}", f"/v2/{image.repo}/blobs/{image.blobs[0].digest}"):
        status, headers, body = http_request(daemon.url + path, headers={"Accept": ACCEPT})
        assert status == 502, (path, status, body)
        assert headers["content-type"] == "application/json"
        error = json.loads(body)["errors"][0]
        assert error["code"] == "UPSTREAM_UNAVAILABLE"
    log = daemon.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "certificate verify failed" in log or "certificate verify failed" in error["message"]
    assert daemon.cache_dir is not None
    assert temp_files(daemon.cache_dir) == []


def test_https_upstream_without_verification_warns(
    daemon_factory: Callable[..., Daemon], upstream: Registry, tls_registry: AuxRegistry
) -> None:
    daemon = daemon_factory(upstreams=[Upstream("docker.io", tls_registry.url, default=True,
                                                extra={"tls_verify": False})])
    warning = "Upstream docker.io: TLS certificate verification is OFF"
    assert warning in daemon.log_text()
    image = upstream.images["oci"]
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.tag}",
                                   headers={"Accept": ACCEPT})
    assert status == 200 and body == image.manifest_bytes
    blob = image.blobs[-1]
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/blobs/{blob.digest}")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
