"""
The outbound proxy (issue 22), through Debian's tinyproxy on loopback:
an HTTP upstream in absolute form, a TLS upstream through a CONNECT
tunnel verified against its private CA, with and without proxy
authentication; and a proxy that refuses or is not there, which costs
the client a 502 with a distribution-spec body and the operator one log
line naming the proxy.  The proxy's own log says the traffic went
through it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator

import pytest

from ocitest import free_port, http_request
from ocitest.daemon import Daemon, Upstream, config_text
from ocitest.gitserver import GitServer, git
from ocitest.hop import Hop
from ocitest.images import MEDIA
from ocitest.ops import PKI, AuxRegistry, TokenServer, make_pki
from ocitest.proxy import Tinyproxy
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)
CREDENTIALS = ("builder", "pr0xy-s3cret")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def tls_registry(tmp_path: os.PathLike[str], upstream: Registry, pki: PKI) -> Iterator[AuxRegistry]:
    with AuxRegistry(os.path.join(str(tmp_path), "tls-registry"), upstream.storage, tls=pki) as registry:
        yield registry


@pytest.fixture
def open_proxy(tmp_path: os.PathLike[str]) -> Iterator[Tinyproxy]:
    with Tinyproxy(os.path.join(str(tmp_path), "open-proxy")) as proxy:
        yield proxy


@pytest.fixture
def guarded_proxy(tmp_path: os.PathLike[str]) -> Iterator[Tinyproxy]:
    with Tinyproxy(os.path.join(str(tmp_path), "guarded-proxy"), credentials=CREDENTIALS) as proxy:
        yield proxy


def _pull(daemon: Daemon, upstream: Registry) -> None:
    """A manifest and every blob of the C{oci} image, checked byte for byte."""
    image = upstream.images["oci"]
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.tag}",
                                   headers={"Accept": ACCEPT})
    assert status == 200, (status, body, daemon.log_tail())
    assert body == image.manifest_bytes
    for blob in image.blobs:
        status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/blobs/{blob.digest}")
        assert status == 200, (status, body)
        assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest


@pytest.mark.parametrize("authenticated", [False, True], ids=["open", "proxy-auth"])
def test_http_upstream_goes_through_the_proxy_in_absolute_form(
    daemon_factory: Callable[..., Daemon], upstream: Registry, hop: Hop, open_proxy: Tinyproxy,
    guarded_proxy: Tinyproxy, authenticated: bool,
) -> None:
    proxy = guarded_proxy if authenticated else open_proxy
    daemon = daemon_factory(upstreams=[Upstream("docker.io", hop.url, default=True, extra={
        "proxy": proxy.url(CREDENTIALS if authenticated else None)})])
    _pull(daemon, upstream)

    image = upstream.images["oci"]
    carried = proxy.requests()
    assert f"GET {hop.url}/v2/{image.repo}/manifests/{image.tag} HTTP/1.1" in carried, carried
    for blob in image.blobs:
        assert f"GET {hop.url}/v2/{image.repo}/blobs/{blob.digest} HTTP/1.1" in carried, carried
    # Every request the upstream saw came through the proxy.
    assert hop.count() == len([line for line in carried if line.startswith(f"GET {hop.url}/")]) > 0
    assert CREDENTIALS[1] not in daemon.log_text()


@pytest.mark.parametrize("authenticated", [False, True], ids=["open", "proxy-auth"])
def test_tls_upstream_goes_through_a_connect_tunnel_verified_end_to_end(
    daemon_factory: Callable[..., Daemon], upstream: Registry, tls_registry: AuxRegistry, pki: PKI,
    open_proxy: Tinyproxy, guarded_proxy: Tinyproxy, authenticated: bool,
) -> None:
    proxy = guarded_proxy if authenticated else open_proxy
    daemon = daemon_factory(upstreams=[Upstream("docker.io", tls_registry.url, default=True, extra={
        "ca_file": pki.ca_cert, "proxy": proxy.url(CREDENTIALS if authenticated else None)})])
    _pull(daemon, upstream)

    authority = tls_registry.url.removeprefix("https://")
    carried = proxy.requests()
    assert f"CONNECT {authority} HTTP/1.1" in carried, carried
    # Nothing went to the upstream outside a tunnel.
    assert all(line.startswith("CONNECT ") for line in carried), carried
    assert CREDENTIALS[1] not in daemon.log_text()


def test_tls_through_the_proxy_still_verifies_the_upstream(
    daemon_factory: Callable[..., Daemon], upstream: Registry, tls_registry: AuxRegistry, open_proxy: Tinyproxy,
) -> None:
    """Without the upstream's CA the tunnel opens, and the TLS inside it fails as it would direct."""
    daemon = daemon_factory(upstreams=[Upstream("docker.io", tls_registry.url, default=True,
                                                extra={"proxy": open_proxy.url()})])
    image = upstream.images["oci"]
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.tag}",
                                   headers={"Accept": ACCEPT})
    assert status == 502, (status, body)
    assert json.loads(body)["errors"][0]["code"] == "UPSTREAM_UNAVAILABLE"
    assert f"CONNECT {tls_registry.url.removeprefix('https://')} HTTP/1.1" in open_proxy.requests()
    assert "certificate verify failed" in daemon.log_text() + body.decode()


@pytest.mark.parametrize(("scheme", "credentials"), [("http", None), ("https", None),
                                                     ("https", ("builder", "wrong-password"))],
                         ids=["http-none", "https-none", "https-wrong"])
def test_a_proxy_that_refuses_is_a_502_and_one_log_line_naming_it(
    daemon_factory: Callable[..., Daemon], upstream: Registry, hop: Hop, tls_registry: AuxRegistry, pki: PKI,
    guarded_proxy: Tinyproxy, scheme: str, credentials: tuple[str, str] | None,
) -> None:
    """
    tinyproxy answers 407 without credentials and 401 to wrong ones: a
    401 in absolute form cannot be told from the upstream's, so wrong
    credentials are tried on a tunnel only, whose answer is the proxy's.
    """
    url = hop.url if scheme == "http" else tls_registry.url
    daemon = daemon_factory(upstreams=[Upstream("docker.io", url, default=True, extra={
        "ca_file": pki.ca_cert, "proxy": guarded_proxy.url(credentials)})])
    image = upstream.images["oci"]
    code = "401" if credentials else "407"
    for digest in [blob.digest for blob in image.blobs]:
        status, headers, body = http_request(f"{daemon.url}/v2/{image.repo}/blobs/{digest}")
        assert status == 502, (status, body)
        assert headers["content-type"] == "application/json"
        error = json.loads(body)["errors"][0]
        assert error["code"] == "UPSTREAM_UNAVAILABLE"
        assert guarded_proxy.url() in error["message"] and code in error["message"], error
    assert hop.count() == 0
    assert len(guarded_proxy.requests()) == len(image.blobs)
    log = daemon.log_text()
    assert "Traceback" not in log
    assert "wrong-password" not in log
    lines = [line for line in log.splitlines() if f"docker.io: the proxy {guarded_proxy.url()}" in line]
    assert len(lines) == 1 and code in lines[0], lines


def test_a_proxy_that_is_not_there_is_a_502_naming_it(
    daemon_factory: Callable[..., Daemon], upstream: Registry, tls_registry: AuxRegistry, pki: PKI,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    daemon = daemon_factory(upstreams=[Upstream("docker.io", tls_registry.url, default=True, extra={
        "ca_file": pki.ca_cert, "proxy": nobody})])
    image = upstream.images["oci"]
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.tag}",
                                   headers={"Accept": ACCEPT})
    assert status == 502, (status, body)
    error = json.loads(body)["errors"][0]
    assert error["code"] == "UPSTREAM_UNAVAILABLE" and f"cannot connect to the proxy {nobody}" in error["message"]
    assert f"docker.io: cannot connect to the proxy {nobody}" in daemon.log_text()


def test_proxy_empty_goes_direct_despite_the_default(
    daemon_factory: Callable[..., Daemon], upstream: Registry, hop: Hop, open_proxy: Tinyproxy,
) -> None:
    daemon = daemon_factory(
        upstreams=[Upstream("docker.io", hop.url, default=True, extra={"proxy": ""}),
                   Upstream("ghcr.io", hop.url)],
        extra_tables={"proxy": {"url": open_proxy.url()}})
    _pull(daemon, upstream)
    assert open_proxy.requests() == []
    image = upstream.images["oci"]
    # ghcr.io has no key of its own: [proxy] url is its proxy.
    status, _, _ = http_request(f"{daemon.url}/v2/ghcr.io/{image.repo}/manifests/{image.tag}",
                                headers={"Accept": ACCEPT})
    assert status == 200
    assert f"GET {hop.url}/v2/{image.repo}/manifests/{image.tag} HTTP/1.1" in open_proxy.requests()


def test_the_token_realm_goes_through_the_proxy_too(
    tmp_path: os.PathLike[str], daemon_factory: Callable[..., Daemon], upstream: Registry, guarded_proxy: Tinyproxy,
) -> None:
    """A registry with token auth: the registry and its token realm are both reached through the proxy."""
    tokens = TokenServer(os.path.join(str(tmp_path), "tokens"), "ocibot", "bot-password").start()
    try:
        with AuxRegistry(os.path.join(str(tmp_path), "registry"), upstream.storage,
                         auth_yaml=tokens.registry_auth_yaml()) as registry:
            password_file = os.path.join(str(tmp_path), "password")
            with open(password_file, "w") as f:
                f.write("bot-password\n")
            daemon = daemon_factory(upstreams=[Upstream("docker.io", registry.url, default=True, extra={
                "username": "ocibot", "password_file": password_file, "proxy": guarded_proxy.url(CREDENTIALS)})])
            _pull(daemon, upstream)
            carried = guarded_proxy.requests()
            assert any(line.startswith(f"GET {tokens.realm}?") for line in carried), carried
            assert any(line.startswith(f"GET {registry.url}/v2/") for line in carried), carried
            assert len(tokens.requests) >= 1 and all(request["authorized"] for request in tokens.requests)
    finally:
        tokens.stop()


def test_git_and_file_remotes_go_through_the_default_proxy(tmp_path: os.PathLike[str], open_proxy: Tinyproxy) -> None:
    """[proxy] url is the proxy of the [[git]] and [[files]] remotes too; a remote's proxy = "" goes direct."""
    server = GitServer(os.path.join(str(tmp_path), "gitserver")).start()
    try:
        server.create("public/app.git")
        port = free_port()
        origin = server.url.removesuffix("/repos")
        text = config_text(port=port, cache_dir=os.path.join(str(tmp_path), "cache"), upstreams=[],
                           extra_tables={"proxy": {"url": open_proxy.url()}})
        text += (f'\n[[git]]\nname = "git.test"\nurl = "{server.url}"\n'
                 f'[[files]]\nname = "plain"\nurl = "{origin}"\n'
                 f'[[files]]\nname = "direct"\nurl = "{origin}/repos"\nproxy = ""\n')
        path = os.path.join(str(tmp_path), "ocicache.toml")
        with open(path, "w") as f:
            f.write(text)
        with Daemon(path, port=port, workdir=os.path.join(str(tmp_path), "daemon")) as daemon:
            into = os.path.join(str(tmp_path), "clone")
            git("clone", f"{daemon.url}/git/git.test/public/app.git", into, cwd=str(tmp_path))
            status, _, body = http_request(f"{daemon.url}/files/plain/repos/public/app.git/HEAD")
            assert status == 200 and body == b"ref: refs/heads/main\n"
            status, _, body = http_request(f"{daemon.url}/files/direct/public/app.git/HEAD")
            assert status == 200 and body == b"ref: refs/heads/main\n"
        carried = open_proxy.requests()
        # Both remotes asked for the same file; only "plain" went through the proxy (proxy = "": direct).
        assert sum(line == f"GET {origin}/repos/public/app.git/HEAD HTTP/1.1" for line in carried) == 1, carried
        assert any(line.startswith(f"GET {server.url}/public/app.git/info/refs?") for line in carried), carried
        assert any(line.startswith(f"POST {server.url}/public/app.git/git-upload-pack ") for line in carried)
        assert f"GET {origin}/repos/public/app.git/HEAD HTTP/1.1" in carried, carried
    finally:
        server.stop()
