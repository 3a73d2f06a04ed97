"""
Upstream credentials and tokens never show: not in the daemon's log, not
in /metrics, not in any error body, with a real docker-registry asking for
Basic auth (htpasswd) and for tokens (auth.token, with a small token
server in the test).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterator

import pytest

from ocitest import free_port, http_request
from ocitest.daemon import Daemon, Upstream, start_daemon
from ocitest.images import MEDIA, Image
from ocitest.ops import AuxRegistry, TokenServer, htpasswd_line, metric_value, scrape
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)
USERNAME = "ocibot"


@pytest.fixture
def password() -> str:
    return "pw-" + secrets.token_hex(12)


def _secrets_of(password: str) -> list[str]:
    basic = base64.b64encode(f"{USERNAME}:{password}".encode()).decode()
    return [password, basic, basic.rstrip("=")[:24]]


def _start(workdir: str, url: str, password: str, log_format: str = "text") -> tuple[Daemon, int]:
    password_file = os.path.join(workdir, "password")
    os.makedirs(workdir, exist_ok=True)
    with open(password_file, "w") as f:
        f.write(password + "\n")
    os.chmod(password_file, 0o600)
    metrics_port = free_port()
    daemon = start_daemon(
        workdir,
        [Upstream("docker.io", url, default=True,
                  extra={"username": USERNAME, "password_file": password_file})],
        extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}},
        server_extra={"log_format": log_format},
    )
    return daemon, metrics_port


def _pull(daemon: Daemon, image: Image) -> None:
    status, headers, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.tag}",
                                         headers={"Accept": ACCEPT})
    assert status == 200, body
    assert body == image.manifest_bytes
    blob = image.blobs[-1]
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/blobs/{blob.digest}")
    assert status == 200
    assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
    assert http_request(f"{daemon.url}/v2/{image.repo}/blobs/{image.blobs[0].digest}", method="HEAD")[0] == 200
    assert image.tag is not None  # pulled by tag above
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/tags/list")
    assert status == 200 and image.tag.encode() in body


def _error_bodies(daemon: Daemon, image: Image) -> list[bytes]:
    bodies = []
    for path in (f"/v2/{image.repo}/manifests/no-such-tag",
                 f"/v2/{image.repo}/blobs/sha256:{'0' * 64}",
                 "/v2/library/no-such-repo/tags/list",
                 f"/v2/{image.repo}/blobs/uploads/"):
        status, _, body = http_request(daemon.url + path, headers={"Accept": ACCEPT})
        assert status >= 400, path
        bodies.append(body)
    return bodies


def _assert_nowhere(needles: list[str], daemon: Daemon, metrics: str, bodies: list[bytes]) -> None:
    log = daemon.log_text()
    assert log.strip(), "the daemon wrote no log"
    for needle in needles:
        assert needle not in log, f"a credential appears in {daemon.log_path}"
        assert needle not in metrics, "a credential appears in /metrics"
        for body in bodies:
            assert needle.encode() not in body, f"a credential appears in an error body: {body[:200]!r}"
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def basic_registry(tmp_path: os.PathLike[str], upstream: Registry, password: str) -> Iterator[AuxRegistry]:
    htpasswd = os.path.join(str(tmp_path), "htpasswd")
    with open(htpasswd, "w") as f:
        f.write(htpasswd_line(USERNAME, password))
    registry = AuxRegistry(
        os.path.join(str(tmp_path), "basic-registry"), upstream.storage,
        auth_yaml=["auth:", "  htpasswd:", "    realm: ocitest", f"    path: {htpasswd}"],
    )
    with registry:
        yield registry


def test_basic_credentials_never_leak(
    tmp_path: os.PathLike[str], upstream: Registry, basic_registry: AuxRegistry, password: str
) -> None:
    image = upstream.images["oci"]
    # The upstream really wants them.
    assert http_request(f"{basic_registry.url}/v2/{image.repo}/manifests/{image.tag}")[0] == 401

    daemon, metrics_port = _start(os.path.join(str(tmp_path), "good"), basic_registry.url, password)
    try:
        _pull(daemon, image)
        bodies = _error_bodies(daemon, image)
        metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        # The Basic challenge was answered: a 401, then 200s.
        assert metric_value(metrics, "ocicache_upstream_requests_total", kind="manifest", code="401") >= 1
        assert metric_value(metrics, "ocicache_upstream_requests_total", kind="manifest", code="200") >= 1
        # The upstream goes away: the 502 body names no credential either.
        basic_registry.stop()
        status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/other",
                                       headers={"Accept": ACCEPT})
        assert status == 502 and b"UPSTREAM_UNAVAILABLE" in body
        bodies.append(body)
        metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        daemon.stop()
    _assert_nowhere(_secrets_of(password), daemon, metrics, bodies)


def test_a_wrong_password_is_not_echoed(
    tmp_path: os.PathLike[str], upstream: Registry, basic_registry: AuxRegistry
) -> None:
    wrong = "wrong-" + secrets.token_hex(12)
    image = upstream.images["oci"]
    daemon, metrics_port = _start(os.path.join(str(tmp_path), "bad"), basic_registry.url, wrong)
    try:
        status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.tag}",
                                       headers={"Accept": ACCEPT})
        assert status == 401 and b"UNAUTHORIZED" in body
        bodies = [body, *_error_bodies(daemon, image)]
        metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        daemon.stop()
    _assert_nowhere(_secrets_of(wrong), daemon, metrics, bodies)


def test_tokens_and_credentials_never_leak(
    tmp_path: os.PathLike[str], upstream: Registry, password: str
) -> None:
    image = upstream.images["oci"]
    tokens = TokenServer(os.path.join(str(tmp_path), "tokens"), USERNAME, password).start()
    try:
        registry = AuxRegistry(os.path.join(str(tmp_path), "token-registry"), upstream.storage,
                               auth_yaml=tokens.registry_auth_yaml())
        with registry:
            assert http_request(f"{registry.url}/v2/{image.repo}/manifests/{image.tag}")[0] == 401
            daemon, metrics_port = _start(os.path.join(str(tmp_path), "daemon"), registry.url, password,
                                          log_format="json")
            try:
                _pull(daemon, image)
                bodies = _error_bodies(daemon, image)
                metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            finally:
                daemon.stop()
    finally:
        tokens.stop()
    assert tokens.issued, "the token server issued no token"
    assert all(request["authorized"] for request in tokens.requests), "ocicache sent no credentials"
    assert metric_value(metrics, "ocicache_upstream_requests_total", kind="token", code="200") >= 1
    _assert_nowhere(_secrets_of(password) + tokens.issued + [t.split(".")[2] for t in tokens.issued],
                    daemon, metrics, bodies)
