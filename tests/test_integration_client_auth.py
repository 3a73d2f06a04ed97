"""
Client authentication (C{[auth]}) against the real daemon, with real
clients: skopeo with Basic credentials and through the registry token
flow, containerd with a static bearer token in C{hosts.toml}, podman
after C{podman login}, and OIDC workload tokens from a test issuer run
here (its JWKS on loopback).  Every test ends by checking that no
password, token or JWT reached the daemon's log or C{/metrics}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocitest import free_port, http_request
from ocitest.containerd import Containerd, write_hosts_dir
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.oidc import OIDCIssuer
from ocitest.ops import htpasswd_line, metric_value, scrape

pytestmark = pytest.mark.integration

PASSWORD = "correct-horse-" + secrets.token_hex(8)
STATIC_TOKEN = "ocitest-" + secrets.token_urlsafe(24)
HASHED_TOKEN = "ocitest-" + secrets.token_urlsafe(24)
AUDIENCE = "ocicache-ci"
MANIFEST_ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)


def assert_dir_copy(dest: str, image: Image) -> None:
    """skopeo's dir: copy holds the upstream's manifests and blobs, byte for byte."""
    with open(os.path.join(dest, "manifest.json"), "rb") as f:
        assert f.read() == image.manifest_bytes
    for child in image.children:
        with open(os.path.join(dest, child.manifest_digest.split(":")[1] + ".manifest.json"), "rb") as f:
            assert f.read() == child.manifest_bytes
    for blob in image.all_blobs():
        with open(os.path.join(dest, blob.hex), "rb") as f:
            assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == blob.digest


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth_files(tmp_path: Path) -> dict[str, str]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", PASSWORD))
    tokens = tmp_path / "tokens"
    digest = hashlib.sha256(HASHED_TOKEN.encode()).hexdigest()
    tokens.write_text(f"# build farm tokens\nbuildfarm:{STATIC_TOKEN}\nrunner:sha256:{digest}\n")
    return {"htpasswd_file": str(htpasswd), "tokens_file": str(tokens)}


@pytest.fixture
def oidc_issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer() as issuer:
        yield issuer


class Mirror:
    """A started daemon with [auth] and a metrics listener."""

    def __init__(self, daemon: Daemon, metrics_url: str) -> None:
        self.daemon = daemon
        self.metrics_url = metrics_url

    @property
    def url(self) -> str:
        return self.daemon.url

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.url + path, headers={"Accept": MANIFEST_ACCEPT, **(headers or {})})

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(scrape(self.metrics_url), name, **labels)

    def assert_no_secrets(self, *more: str) -> None:
        """No credential of this test in the daemon's log or its metrics."""
        log = self.daemon.log_text()
        metrics = scrape(self.metrics_url)
        for secret in (PASSWORD, STATIC_TOKEN, HASHED_TOKEN, *more):
            assert secret not in log, "a secret reached the daemon log"
            assert secret not in metrics, "a secret reached /metrics"
            encoded = base64.b64encode(f"alice:{secret}".encode()).decode()
            assert encoded not in log, "Basic credentials reached the daemon log"
        assert "Traceback" not in log, self.daemon.log_tail()


@pytest.fixture
def mirror(daemon_factory: Callable[..., Daemon]) -> Callable[..., Mirror]:
    def start(log_format: str = "text", **auth: Any) -> Mirror:
        port = free_port()
        daemon = daemon_factory(server_extra={"log_format": log_format}, extra_tables={
            "auth": auth, "metrics": {"listen": f"tcp:{port}:interface=127.0.0.1"},
        })
        return Mirror(daemon, f"http://127.0.0.1:{port}/metrics")

    return start


def error_of(body: bytes) -> str:
    errors = json.loads(body)["errors"]
    assert len(errors) == 1, errors
    return str(errors[0]["code"])


def skopeo_copy(skopeo: str, mirror: Mirror, image: Image, dest: str, *creds: str) -> subprocess.CompletedProcess[str]:
    cmd = [skopeo, "--insecure-policy", "copy", "--all", "--src-tls-verify=false", *creds,
           f"docker://{mirror.daemon.host}/docker.io/{image.repo}:{image.tag}", f"dir:{dest}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


# --- htpasswd: Basic --------------------------------------------------------------


def test_skopeo_with_basic_credentials_and_one_bcrypt_per_pull(
    mirror: Callable[..., Mirror], auth_files: dict[str, str], skopeo: str,
    ocitest_images: dict[str, Image], hop: Hop, tmp_path: Path,
) -> None:
    m = mirror(htpasswd_file=auth_files["htpasswd_file"])
    image = ocitest_images["index"]

    # Without credentials: a 401 that says Basic, before anything moved.
    status, headers, body = m.get("/v2/")
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")
    assert headers["www-authenticate"] == 'Basic realm="ocicache"'
    status, headers, body = m.get(f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io")
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")
    status, _, body = m.get(f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io", basic("alice", "wrong"))
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")
    status, _, body = m.get(f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io", basic("mallory", PASSWORD))
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")
    failed = skopeo_copy(skopeo, m, image, str(tmp_path / "none"))
    assert failed.returncode != 0
    assert hop.count() == 0, f"an unauthenticated request went upstream:\n{hop.summary()}"
    checks_before = m.metric("ocicache_password_checks_total")
    assert checks_before == 2  # the wrong password and the unknown user

    dest = str(tmp_path / "copy")
    copied = skopeo_copy(skopeo, m, image, dest, "--src-creds", f"alice:{PASSWORD}")
    assert copied.returncode == 0, copied.stderr[-3000:]
    assert_dir_copy(dest, image)
    # A whole pull (index, children, blobs) cost one bcrypt.
    assert m.metric("ocicache_password_checks_total") - checks_before == 1
    assert m.metric("ocicache_client_auth_total", method="basic", result="ok") >= len(image.all_blobs())
    # The wrong password, the unknown user, and skopeo's empty credentials
    # (refused without a bcrypt).
    assert m.metric("ocicache_client_auth_total", method="basic", result="refused") == 3
    assert m.metric("ocicache_client_auth_total", method="none", result="refused") >= 2

    log = m.daemon.log_text()
    assert "Client authentication: 1 htpasswd user(s), anonymous refused" in log
    assert "clear text" not in log  # loopback only
    access = [line for line in log.splitlines() if f"/v2/docker.io/{image.repo}/" in line]
    assert any(line.rstrip().endswith(" user:alice") for line in access), access[-3:]
    m.assert_no_secrets()


# --- the registry token flow ------------------------------------------------------


def test_skopeo_through_the_token_flow(
    mirror: Callable[..., Mirror], auth_files: dict[str, str], skopeo: str,
    ocitest_images: dict[str, Image], hop: Hop, tmp_path: Path,
) -> None:
    m = mirror(htpasswd_file=auth_files["htpasswd_file"], issue_tokens=True)
    image = ocitest_images["oci"]
    realm = f"{m.url}/token"

    status, headers, body = m.get("/v2/")
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")
    assert headers["www-authenticate"] == f'Bearer realm="{realm}",service="ocicache"'
    status, headers, _ = m.get(f"/v2/docker.io/{image.repo}/manifests/{image.tag}")
    assert status == 401
    assert headers["www-authenticate"] == (
        f'Bearer realm="{realm}",service="ocicache",scope="repository:docker.io/{image.repo}:pull"')

    # The token endpoint: Basic credentials in, a short-lived token out.
    scope = f"repository:{image.repo}:pull"
    status, headers, body = http_request(f"{realm}?service=ocicache&scope={scope}")
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")
    assert headers["www-authenticate"] == 'Basic realm="ocicache"'
    status, _, body = http_request(f"{realm}?service=ocicache&scope={scope}", headers=basic("alice", "nope"))
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")
    status, headers, body = http_request(f"{realm}?service=ocicache&scope={scope}",
                                         headers=basic("alice", PASSWORD))
    assert status == 200, body
    assert headers["cache-control"] == "no-store"
    answer = json.loads(body)
    token = answer["token"]
    assert answer["access_token"] == token and 0 < answer["expires_in"] <= 300
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert (claims["sub"], claims["aud"]) == ("alice", "ocicache")
    assert claims["access"] == [{"type": "repository", "name": image.repo, "actions": ["pull"]}]

    status, headers, body = m.get(f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io", bearer(token))
    assert status == 200 and body == image.manifest_bytes
    # A token is not swapped for another; a forged one proves nothing.
    status, _, body = http_request(realm, headers=bearer(token))
    assert (status, error_of(body)) == (403, "DENIED")
    head, payload, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "root"}).encode()).rstrip(b"=").decode()
    status, _, body = m.get(f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io",
                            bearer(f"{head}.{forged}.{signature}"))
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")

    # skopeo follows the challenge to /token by itself.
    dest = str(tmp_path / "copy")
    copied = skopeo_copy(skopeo, m, image, dest, "--src-creds", f"alice:{PASSWORD}")
    assert copied.returncode == 0, copied.stderr[-3000:]
    assert_dir_copy(dest, image)
    assert m.metric("ocicache_http_requests_total", route="token", method="GET", code="200") >= 2
    log = m.daemon.log_text()
    assert any("/token?" in line and line.rstrip().endswith(" user:alice") for line in log.splitlines())
    m.assert_no_secrets(token, signature)


# --- static bearer tokens: containerd's hosts.toml header -------------------------


def test_ctr_pull_with_a_bearer_token_in_hosts_toml(
    mirror: Callable[..., Mirror], auth_files: dict[str, str], ocitest_images: dict[str, Image],
    containerd_factory: Callable[[], Containerd], hop: Hop, tmp_path: Path,
) -> None:
    m = mirror(tokens_file=auth_files["tokens_file"])
    image = ocitest_images["list"]
    ref = f"docker.io/{image.repo}:{image.tag}"

    wrong = write_hosts_dir(str(tmp_path / "wrong"), "docker.io", m.url,
                            header={"Authorization": "Bearer not-" + STATIC_TOKEN})
    ctrd = containerd_factory()
    with pytest.raises(Exception) as refused:
        ctrd.pull(ref, hosts_dir=wrong)
    assert "401" in str(refused.value) or "unauthorized" in str(refused.value).lower()
    assert hop.count() == 0, hop.summary()

    hosts = write_hosts_dir(str(tmp_path / "hosts"), "docker.io", m.url,
                            header={"Authorization": f"Bearer {STATIC_TOKEN}"})
    ctrd.pull(ref, hosts_dir=hosts)
    assert ctrd.image_digest(ref) == image.manifest_digest
    assert "complete" in ctrd.check(ref)
    platform_image = image.for_platform("amd64")
    for blob in platform_image.blobs:
        assert ctrd.content_get(blob.digest) == blob.data

    # The hashed entry works the same, under its own name.
    status, _, body = m.get(f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io", bearer(HASHED_TOKEN))
    assert status == 200 and body == image.manifest_bytes
    access = m.daemon.log_text().splitlines()
    assert any(line.rstrip().endswith(" token:buildfarm") for line in access)
    assert any(line.rstrip().endswith(" token:runner") for line in access)
    assert m.metric("ocicache_client_auth_total", method="bearer", result="refused") >= 1
    m.assert_no_secrets()


# --- podman login ----------------------------------------------------------------


def test_podman_login_then_pull(
    mirror: Callable[..., Mirror], auth_files: dict[str, str], ocitest_images: dict[str, Image],
    hop: Hop, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    podman = shutil.which("podman")
    assert podman is not None, "podman is not installed: apt-get install -y podman"
    m = mirror(htpasswd_file=auth_files["htpasswd_file"], issue_tokens=True)
    image = ocitest_images["oci"]
    authfile = str(tmp_path / "auth.json")
    # podman wants its runroot shorter than 50 characters.
    runroot = tempfile.mkdtemp(prefix="ocp-")
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    env = {**os.environ, "REGISTRY_AUTH_FILE": authfile, "XDG_RUNTIME_DIR": runroot}
    storage = ["--root", str(tmp_path / "root"), "--runroot", runroot,
               "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]

    def run(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([podman, *storage, *args], capture_output=True, text=True, timeout=300,
                              env=env, input=password)

    denied = run("login", "--tls-verify=false", "--username", "alice", "--password-stdin", m.daemon.host,
                 password="wrong\n")
    assert denied.returncode != 0
    login = run("login", "--tls-verify=false", "--username", "alice", "--password-stdin", m.daemon.host,
                password=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr[-2000:]
    pulled = run("pull", "--tls-verify=false", f"{m.daemon.host}/docker.io/{image.repo}:{image.tag}")
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    inspected = run("image", "inspect", "--format", "{{.Digest}}",
                    f"{m.daemon.host}/docker.io/{image.repo}:{image.tag}")
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    assert inspected.stdout.strip() == image.for_platform("amd64").manifest_digest or \
        inspected.stdout.strip() == image.manifest_digest
    assert any(line.rstrip().endswith(" user:alice") for line in m.daemon.log_text().splitlines())
    m.assert_no_secrets()


# --- OIDC workload identity -------------------------------------------------------


def test_oidc_workload_tokens(
    mirror: Callable[..., Mirror], oidc_issuer: OIDCIssuer, ocitest_images: dict[str, Image],
    hop: Hop, tmp_path: Path,
) -> None:
    # JSON log lines here: their fields are checked for secrets too.
    m = mirror(log_format="json",
               oidc=[{"issuer": oidc_issuer.issuer, "audience": AUDIENCE, "jwks_url": oidc_issuer.jwks_url}])
    image = ocitest_images["oci"]
    path = f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io"
    good = oidc_issuer.mint(sub="repo:org/app:ref:refs/heads/main", aud=[AUDIENCE, "other"],
                            repository="org/app", ref="refs/heads/main", run_number=7)

    status, _, body = m.get(path, bearer(good))
    assert status == 200 and body == image.manifest_bytes
    # As the password of Basic credentials (docker login in CI), any user name.
    status, _, body = m.get(path, basic("ci", good))
    assert status == 200 and body == image.manifest_bytes
    assert oidc_issuer.fetches == 1, "the JWKS is fetched once and cached"

    other = OIDCIssuer()
    refused = {
        "expired": oidc_issuer.mint(expires_in=-120),
        "wrong audience": oidc_issuer.mint(aud="someone-else"),
        "wrong key": oidc_issuer.mint(key=other.key, kid=oidc_issuer.key.kid),
        "unknown issuer": oidc_issuer.mint(issuer="https://elsewhere.example"),
        "no expiry": oidc_issuer.mint(exp=None),
    }
    upstream_before = hop.count()
    for what, token in refused.items():
        status, headers, body = m.get(path, bearer(token))
        assert (status, error_of(body)) == (401, "UNAUTHORIZED"), what
        assert headers["www-authenticate"].startswith("Basic "), what
    assert hop.count() == upstream_before, f"a refused request went upstream:\n{hop.summary()}"

    # The issuer rotates its key: a token under the new kid makes one
    # refresh; more unknown kids within a minute make none.
    oidc_issuer.rotate()
    status, _, _ = m.get(path, bearer(oidc_issuer.mint()))
    assert status == 200
    assert oidc_issuer.fetches == 2
    for _ in range(5):
        status, _, _ = m.get(path, bearer(oidc_issuer.mint(key=other.key)))
        assert status == 401
    assert oidc_issuer.fetches == 2

    events = [json.loads(line) for line in m.daemon.log_text().splitlines() if line.startswith("{")]
    identities = {e.get("identity") for e in events if e.get("namespace") == "ocicache.access"}
    assert "oidc:repo:org/app:ref:refs/heads/main" in identities
    m.assert_no_secrets(good, *refused.values(), good.split(".")[2])


def test_oidc_from_a_jwks_file_through_the_token_flow(
    mirror: Callable[..., Mirror], oidc_issuer: OIDCIssuer, skopeo: str, ocitest_images: dict[str, Image],
    hop: Hop, tmp_path: Path,
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(oidc_issuer.jwks()))
    m = mirror(issue_tokens=True, oidc=[{"issuer": oidc_issuer.issuer, "audience": AUDIENCE,
                                         "jwks_file": str(jwks)}])
    image = ocitest_images["oci"]
    workload = oidc_issuer.mint(sub="pipeline:42", pipeline="42")

    dest = str(tmp_path / "copy")
    copied = skopeo_copy(skopeo, m, image, dest, "--src-creds", f"ci:{workload}")
    assert copied.returncode == 0, copied.stderr[-3000:]
    assert_dir_copy(dest, image)
    assert oidc_issuer.fetches == 0, "a jwks_file is never fetched"
    expired = oidc_issuer.mint(expires_in=-300)
    failed = skopeo_copy(skopeo, m, image, str(tmp_path / "expired"), "--src-creds", f"ci:{expired}")
    assert failed.returncode != 0
    log = m.daemon.log_text().splitlines()
    assert any(line.rstrip().endswith(" oidc:pipeline:42") for line in log)
    m.assert_no_secrets(workload, expired)


# --- anonymous = true -------------------------------------------------------------


def test_anonymous_allowed_but_wrong_credentials_still_refused(
    mirror: Callable[..., Mirror], auth_files: dict[str, str], ocitest_images: dict[str, Image], hop: Hop,
) -> None:
    m = mirror(anonymous=True, tokens_file=auth_files["tokens_file"])
    image = ocitest_images["oci"]
    path = f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io"
    assert m.get("/v2/")[0] == 200
    status, _, body = m.get(path)
    assert status == 200 and body == image.manifest_bytes
    status, _, body = m.get(path, bearer("not-" + STATIC_TOKEN))
    assert (status, error_of(body)) == (401, "UNAUTHORIZED")
    status, _, _ = m.get(path, bearer(STATIC_TOKEN))
    assert status == 200
    # No token endpoint without issue_tokens.
    status, _, body = http_request(m.url + "/token")
    assert (status, error_of(body)) == (404, "UNSUPPORTED")
    m.assert_no_secrets()
