"""
Logging in upstream against a real docker-registry with token auth (its
token server one of ours, L{ocitest.ops.TokenServer}): a wrong password
costs a bounded number of failed logins however many clients ask (issue
19, item 2), and a short-lived token is reused (item 3).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from ocitest import http_request, wait_for
from ocitest.daemon import Daemon, Upstream, start_daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.ops import AuxRegistry, TokenServer, htpasswd_line
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = {"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}
USERNAME = "ocibot"
PASSWORD = "right-password"


@pytest.fixture
def token_registry(tmp_path: os.PathLike[str], upstream: Registry,
                   request: pytest.FixtureRequest) -> Iterator[tuple[AuxRegistry, TokenServer]]:
    """The session upstream's storage behind token auth; tokens live C{expires_in} (param) seconds."""
    expires_in = getattr(request, "param", 300)
    tokens = TokenServer(os.path.join(str(tmp_path), "tokens"), USERNAME, PASSWORD, expires_in).start()
    try:
        with AuxRegistry(os.path.join(str(tmp_path), "registry"), upstream.storage,
                         auth_yaml=tokens.registry_auth_yaml()) as registry:
            yield registry, tokens
    finally:
        tokens.stop()


def _start(workdir: str, url: str, password: str) -> tuple[Daemon, str]:
    os.makedirs(workdir, exist_ok=True)
    password_file = os.path.join(workdir, "password")
    with open(password_file, "w") as f:
        f.write(password + "\n")
    daemon = start_daemon(workdir, [Upstream("docker.io", url, default=True,
                                             extra={"username": USERNAME, "password_file": password_file})])
    return daemon, password_file


def _get(daemon: Daemon, path: str) -> tuple[int, bytes]:
    status, _, body = http_request(daemon.url + path, headers=ACCEPT)
    return status, body


def test_a_wrong_password_costs_a_bounded_number_of_failed_logins(
    tmp_path: os.PathLike[str], token_registry: tuple[AuxRegistry, TokenServer], ocitest_images: dict[str, Image]
) -> None:
    """
    Twenty concurrent clients, then forty sequential ones over several
    repositories, manifests and blobs, all get a clear 401 at once; the
    token server sees one failed login per backoff (10 s, then 20 s, ...),
    not two per upstream request.  A SIGHUP to the right password works
    at once.
    """
    registry, tokens = token_registry
    daemon, password_file = _start(os.path.join(str(tmp_path), "daemon"), registry.url, "wrong-password")
    try:
        started = time.monotonic()
        results: list[tuple[int, bytes]] = []
        image = ocitest_images["oci"]
        threads = [threading.Thread(target=lambda: results.append(
            _get(daemon, f"/v2/{image.repo}/manifests/{image.tag}"))) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        paths = []
        for name in ("oci", "team", "big1"):
            other = ocitest_images[name]
            paths += [f"/v2/{other.repo}/manifests/{other.tag}", f"/v2/{other.repo}/blobs/{other.blobs[0].digest}",
                      f"/v2/{other.repo}/tags/list"]
        for i in range(40):
            results.append(_get(daemon, paths[i % len(paths)]))
        elapsed = time.monotonic() - started
        assert len(results) == 60
        for status, body in results:
            assert status == 401 and b"UNAUTHORIZED" in body, (status, body[:300])
        # Backoffs of 10, 20, 40 s: at most 3 failed logins in a minute.
        assert elapsed < 60, elapsed
        assert 1 <= tokens.failed_logins() <= 1 + int(elapsed // 10), (tokens.failed_logins(), elapsed)
        assert "Traceback" not in daemon.log_text()

        # New credentials are tried at once, however long the backoff.
        with open(password_file, "w") as f:
            f.write(PASSWORD + "\n")
        before = len(daemon.log_text().splitlines())
        assert daemon.pid is not None
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for(lambda: "Config reloaded" in "\n".join(daemon.log_text().splitlines()[before:]), 15,
                 what="the reload")
        status, body = _get(daemon, f"/v2/{image.repo}/manifests/{image.tag}")
        assert status == 200 and body == image.manifest_bytes
    finally:
        daemon.stop()


@pytest.mark.parametrize("token_registry", [10], indirect=True)
def test_a_short_token_is_reused_for_half_its_lifetime(
    tmp_path: os.PathLike[str], token_registry: tuple[AuxRegistry, TokenServer], ocitest_images: dict[str, Image]
) -> None:
    """
    A cold pull of 8 objects from one repository, against a token server
    issuing 10 s tokens, asks it for one token (a second only if the pull
    outlived the 5 s the first is kept), not one per request.
    """
    registry, tokens = token_registry
    image = ocitest_images["oci"]
    daemon, _ = _start(os.path.join(str(tmp_path), "daemon"), registry.url, PASSWORD)
    try:
        started = time.monotonic()
        status, body = _get(daemon, f"/v2/{image.repo}/manifests/{image.tag}")
        assert status == 200 and body == image.manifest_bytes
        for blob in image.blobs:
            status, body = _get(daemon, f"/v2/{image.repo}/blobs/{blob.digest}")
            assert status == 200 and body == blob.data
        assert _get(daemon, f"/v2/{image.repo}/tags/list")[0] == 200
        assert _get(daemon, f"/v2/{image.repo}/manifests/no-such-tag")[0] == 404
        assert _get(daemon, f"/v2/{image.repo}/blobs/sha256:{'0' * 64}")[0] == 404
        elapsed = time.monotonic() - started
    finally:
        daemon.stop()
    assert len(image.blobs) + 4 == 8
    assert tokens.failed_logins() == 0
    assert 1 <= len(tokens.issued) <= 1 + int(elapsed // 5), (len(tokens.issued), elapsed)


def test_a_refused_token_is_not_asked_for_again_at_once(
    tmp_path: os.PathLike[str], upstream: Registry, ocitest_images: dict[str, Image]
) -> None:
    """
    The token server issues tokens for a repository the account may not
    read, which the registry refuses (401 to a fresh token): that scope
    is not asked for again for the backoff, while the others are served.
    """
    private, public = ocitest_images["team"], ocitest_images["oci"]
    tokens = TokenServer(os.path.join(str(tmp_path), "tokens"), USERNAME, PASSWORD,
                         denied=frozenset({private.repo})).start()
    try:
        with AuxRegistry(os.path.join(str(tmp_path), "registry"), upstream.storage,
                         auth_yaml=tokens.registry_auth_yaml()) as registry:
            daemon, _ = _start(os.path.join(str(tmp_path), "daemon"), registry.url, PASSWORD)
            try:
                started = time.monotonic()
                for _ in range(20):
                    status, body = _get(daemon, f"/v2/{private.repo}/manifests/{private.tag}")
                    assert status == 401 and b"UNAUTHORIZED" in body, (status, body[:300])
                elapsed = time.monotonic() - started
                status, body = _get(daemon, f"/v2/{public.repo}/manifests/{public.tag}")
                assert status == 200 and body == public.manifest_bytes
            finally:
                daemon.stop()
    finally:
        tokens.stop()
    asked = [r for r in tokens.requests if f"repository:{private.repo}:pull" in r["query"].get("scope", [])]
    assert tokens.failed_logins() == 0
    assert 1 <= len(asked) <= 2 * (1 + int(elapsed // 10)), (len(asked), elapsed)


def test_a_wrong_basic_password_is_not_sent_again_at_once(
    tmp_path: os.PathLike[str], upstream: Registry, ocitest_images: dict[str, Image]
) -> None:
    """
    A registry asking for Basic credentials (htpasswd), a wrong password:
    every repository gets the same 401, and the password is sent once per
    backoff, not with every client request.
    """
    htpasswd = os.path.join(str(tmp_path), "htpasswd")
    with open(htpasswd, "w") as f:
        f.write(htpasswd_line(USERNAME, PASSWORD))
    with AuxRegistry(os.path.join(str(tmp_path), "registry"), upstream.storage,
                     auth_yaml=["auth:", "  htpasswd:", "    realm: ocitest", f"    path: {htpasswd}"]) as registry, \
            Hop(registry.url) as hop:
        daemon, _ = _start(os.path.join(str(tmp_path), "daemon"), hop.url, "wrong-password")
        try:
            started = time.monotonic()
            for i in range(30):
                image = ocitest_images[("oci", "team", "big1")[i % 3]]
                status, body = _get(daemon, f"/v2/{image.repo}/manifests/{image.tag}")
                assert status == 401 and b"UNAUTHORIZED" in body, (status, body[:300])
            elapsed = time.monotonic() - started
        finally:
            daemon.stop()
        refused = [r for r in hop.requests if "authorization" in {k.lower() for k in r.headers}]
    assert 1 <= len(refused) <= 1 + int(elapsed // 10), (len(refused), elapsed)
