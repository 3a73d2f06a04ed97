"""
What the daemon checks at start against the real C{twistd ocicache}: a
configured feature whose Python package is missing stops the start with
exit 2 and one line naming the extra to install (issue 19, item 5), and a
mirror that lends its upstream credentials to whoever can reach it says
so (item 8).
"""

from __future__ import annotations

import os
import shutil

import pytest

from ocicache._daemon._preflight import lends_credentials
from ocicache._ops._config import parse_config
from ocitest import free_port, wait_for
from ocitest.daemon import Upstream, start_daemon, write_config
from ocitest.ops import launch
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

LENDING = "pulls with this mirror's upstream credentials"


def _hidden(directory: str, package: str) -> str:
    """A directory for C{PYTHONPATH} where C{import package} fails, as when it is not installed."""
    os.makedirs(os.path.join(directory, package), exist_ok=True)
    with open(os.path.join(directory, package, "__init__.py"), "w") as f:
        f.write(f"raise ImportError({f'No module named {package!r}'!r})\n")
    return directory


def test_the_s3_backend_without_botocore_refuses_to_start(tmp_path: os.PathLike[str]) -> None:
    workdir = str(tmp_path)
    for name in ("access", "secret"):
        with open(os.path.join(workdir, name), "w") as f:
            f.write("not-a-real-key\n")
    config = write_config(
        os.path.join(workdir, "ocicache.toml"), port=free_port(), cache_dir=os.path.join(workdir, "cache"),
        upstreams=[Upstream("docker.io", "http://127.0.0.1:9", default=True)],
        extra_tables={"storage": {"backend": "s3", "endpoint": "http://127.0.0.1:9", "bucket": "ocicache",
                                  "access_key_file": os.path.join(workdir, "access"),
                                  "secret_key_file": os.path.join(workdir, "secret")}},
    )
    hidden = _hidden(os.path.join(workdir, "hidden"), "botocore")
    daemon = launch(config, os.path.join(workdir, "run"), env={**os.environ, "PYTHONPATH": hidden})
    try:
        code = daemon.proc.wait(30)
    finally:
        daemon.stop()
    output = daemon.log_text()
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert lines == [
        "ocicache: [storage] backend = \"s3\" needs the Python package botocore, which is not installed:"
        " pip install 'ocicache[s3]'"], output


def test_a_mirror_lending_its_credentials_beyond_loopback_warns(tmp_path: os.PathLike[str]) -> None:
    """
    Listening on every address, with upstream credentials and no
    C{[auth]}: one warning naming the listener.  Run in a network
    namespace of its own (unshare), where every address is this test's.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) to listen on every address in a namespace")
    workdir = str(tmp_path)
    port = free_port()
    with open(os.path.join(workdir, "password"), "w") as f:
        f.write("secret\n")
    config = write_config(
        os.path.join(workdir, "ocicache.toml"), port=port, cache_dir=os.path.join(workdir, "cache"),
        server_extra={"listen": [f"tcp:{port}"]},
        upstreams=[Upstream("docker.io", "http://127.0.0.1:9", default=True,
                            extra={"username": "bot", "password_file": os.path.join(workdir, "password")})],
    )
    wrapper = [unshare, "--net", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh"]
    daemon = launch(config, os.path.join(workdir, "run"), wrapper=wrapper)
    try:
        wait_for(lambda: "ocicache caching in" in daemon.log_text() or daemon.proc.poll() is not None, 30,
                 what="the start")
    finally:
        daemon.stop()
    warnings = [line for line in daemon.log_text().splitlines() if LENDING in line]
    assert len(warnings) == 1, daemon.log_text()
    assert f"tcp:{port}" in warnings[0] and "[auth]" in warnings[0]


def test_a_loopback_mirror_lends_nothing(tmp_path: os.PathLike[str], upstream: Registry) -> None:
    """The same credentials on the harness's loopback listener: no warning."""
    with open(os.path.join(str(tmp_path), "password"), "w") as f:
        f.write("secret\n")
    daemon = start_daemon(str(tmp_path), [Upstream(
        "docker.io", upstream.url, default=True,
        extra={"username": "bot", "password_file": os.path.join(str(tmp_path), "password")})])
    try:
        wait_for(lambda: "ocicache caching in" in daemon.log_text(), 15, what="the start")
    finally:
        daemon.stop()
    assert LENDING not in daemon.log_text()


@pytest.mark.parametrize(("listen", "auth", "credentials", "lent"), [
    ("tcp:5000", False, True, True),
    ("tcp:5000:interface=0.0.0.0", False, True, True),
    ("tcp6:5000:interface=\\:\\:", False, True, True),
    ("ssl:5443:privateKey=k.pem:interface=10.0.0.5", False, True, True),
    ("tcp:5000:interface=127.0.0.1", False, True, False),
    ("tcp6:5000:interface=\\:\\:1", False, True, False),
    ("unix:/run/ocicache.sock", False, True, False),
    ("tcp:5000", True, True, False),
    ("tcp:5000", False, False, False),
])
def test_lends_credentials(tmp_path: os.PathLike[str], listen: str, auth: bool, credentials: bool,
                           lent: bool) -> None:
    upstream: dict[str, object] = {"name": "docker.io", "url": "https://registry-1.docker.io", "default": True}
    if credentials:
        upstream["token_env"] = "TOKEN"
    data: dict[str, object] = {"server": {"listen": [listen]}, "cache": {"dir": "/tmp/x"}, "upstream": [upstream]}
    if auth:
        tokens = os.path.join(str(tmp_path), "tokens")
        with open(tokens, "w") as f:
            f.write("ci:" + "c" * 32 + "\n")
        data["auth"] = {"tokens_file": tokens}
    config = parse_config(data, environ={"TOKEN": "t" * 20})
    assert lends_credentials(config) == ([listen] if lent else [])
