"""
Where client authentication meets the rest: a SIGHUP replaces the
htpasswd users, an anonymous client the policy refuses is asked to log in
(a 401 with a challenge, not a dead-end 403), and an edge ocicache pulls
through a token-protected regional one with its static token.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from ocitest import http_request, wait_for
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.ops import htpasswd_line

pytestmark = pytest.mark.integration

ACCEPT = {"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}


def basic(user: str, password: str) -> dict[str, str]:
    return {**ACCEPT, "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_reload_replaces_the_htpasswd_users(
        daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image], tmp_path: Path) -> None:
    image = ocitest_images["oci"]
    alice, bob = secrets.token_hex(8), secrets.token_hex(8)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", alice))
    daemon = daemon_factory(extra_tables={"auth": {"htpasswd_file": str(htpasswd)}})
    path = daemon.url + f"/v2/{image.repo}/manifests/{image.tag}"
    assert http_request(path, headers=basic("alice", alice))[0] == 200
    assert http_request(path, headers=basic("bob", bob))[0] == 401
    htpasswd.write_text(htpasswd_line("bob", bob))
    assert daemon.pid is not None
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: "Config reloaded" in daemon.log_text(), 15, what="the reload")
    status, _, body = http_request(path, headers=basic("bob", bob))
    assert status == 200 and body == image.manifest_bytes
    # alice is gone, her remembered check with her.
    assert http_request(path, headers=basic("alice", alice))[0] == 401
    log = daemon.log_text()
    assert alice not in log and bob not in log


def test_an_anonymous_client_the_policy_refuses_is_asked_to_log_in(
        daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image], tmp_path: Path) -> None:
    image = ocitest_images["oci"]
    password = secrets.token_hex(8)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", password))
    daemon = daemon_factory(
        extra_tables={"auth": {"htpasswd_file": str(htpasswd), "anonymous": True}},
        rules=[{"user": "alice"}, {"identity": "anonymous", "repositories": ["library/public-*"]}],
    )
    path = daemon.url + f"/v2/{image.repo}/manifests/{image.tag}"
    status, headers, body = http_request(path, headers=ACCEPT)
    assert status == 401 and b"UNAUTHORIZED" in body
    assert headers["www-authenticate"].startswith("Basic ")
    assert http_request(path, headers=basic("alice", password))[0] == 200


def test_an_edge_pulls_through_a_token_protected_regional(
        daemon_factory: Callable[..., Daemon], hop: Hop, ocitest_images: dict[str, Image], tmp_path: Path) -> None:
    image = ocitest_images["oci"]
    token = "edge-" + secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"edges:sha256:{hashlib.sha256(token.encode()).hexdigest()}\n")
    regional = daemon_factory(extra_tables={"auth": {"tokens_file": str(tokens)}})
    token_file = tmp_path / "edge.token"
    token_file.write_text(token + "\n")
    mirror = {"kind": "mirror", "token_file": str(token_file)}
    edge = daemon_factory(upstreams=[Upstream("docker.io", regional.url, default=True, extra=mirror)])
    status, _, body = http_request(edge.url + f"/v2/{image.repo}/manifests/{image.tag}", headers=ACCEPT)
    assert status == 200 and body == image.manifest_bytes
    for blob in image.blobs:
        assert http_request(edge.url + f"/v2/{image.repo}/blobs/{blob.digest}")[2] == blob.data
    assert "token:edges" in regional.log_text()
    # Without the token the regional refuses the same request.
    assert http_request(regional.url + f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io",
                        headers=ACCEPT)[0] == 401
    assert token not in edge.log_text() and token not in regional.log_text()
