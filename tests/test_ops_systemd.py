"""
The systemd units: C{systemd-analyze verify} accepts them, and the daemon
serves through a socket it inherits (systemd-socket-activate stands in for
systemd, passing C{LISTEN_FDS} as ocicache.socket would).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess

import pytest

from ocitest import REPO_ROOT, free_port, http_request, require_binary
from ocitest.daemon import Upstream, write_config
from ocitest.hop import Hop
from ocitest.images import MEDIA
from ocitest.ops import socket_activated, socket_refuses
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

SYSTEMD_DIR = os.path.join(REPO_ROOT, "systemd")
SHIPPED_TWISTD = "/usr/local/bin/twistd"


def _units_with_real_twistd(directory: str) -> str:
    """
    Copy the units to C{directory}, ExecStart pointing at the twistd this
    machine has (verify checks that the binary exists and is executable).
    """
    twistd = shutil.which("twistd")
    assert twistd is not None, "twistd is not on PATH"
    out = os.path.join(directory, "units")
    for root, _, files in os.walk(SYSTEMD_DIR):
        for name in files:
            source = os.path.join(root, name)
            target = os.path.join(out, os.path.relpath(source, SYSTEMD_DIR))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(source) as f:
                text = f.read()
            with open(target, "w") as f:
                f.write(text.replace(SHIPPED_TWISTD, os.path.realpath(twistd)))
    return out


def test_units_pass_systemd_analyze_verify(tmp_path: os.PathLike[str]) -> None:
    analyze = require_binary("systemd-analyze")
    with open(os.path.join(SYSTEMD_DIR, "ocicache.service")) as f:
        service = f.read()
    assert f"ExecStart={SHIPPED_TWISTD} -n --pidfile= ocicache --config /etc/ocicache/ocicache.toml" in service
    with open(os.path.join(SYSTEMD_DIR, "ocicache.service.d", "socket-activation.conf")) as f:
        assert "--listen systemd:domain=INET:index=0" in f.read()
    units = _units_with_real_twistd(str(tmp_path))
    # The drop-in directory next to the unit is read too.
    result = subprocess.run(
        [analyze, "verify", "--man=no", "ocicache.service", "ocicache.socket"],
        cwd=units, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Unknown keys are only warned about: none is allowed.
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_verify_catches_a_broken_unit(tmp_path: os.PathLike[str]) -> None:
    """The check above can fail: a typo is reported."""
    analyze = require_binary("systemd-analyze")
    units = _units_with_real_twistd(str(tmp_path))
    with open(os.path.join(units, "ocicache.service"), "a") as f:
        f.write("\n[Service]\nProtectSytem=strict\n")
    result = subprocess.run([analyze, "verify", "--man=no", "ocicache.service"],
                            cwd=units, capture_output=True, text=True, timeout=60)
    assert "ProtectSytem" in result.stdout + result.stderr


def test_serves_on_a_socket_from_systemd(
    tmp_path: os.PathLike[str], hop: Hop, upstream: Registry
) -> None:
    workdir = str(tmp_path)
    socket_port, config_port = free_port(), free_port()
    config = write_config(os.path.join(workdir, "ocicache.toml"), port=config_port,
                          cache_dir=os.path.join(workdir, "cache"),
                          upstreams=[Upstream("docker.io", hop.url, default=True)])
    daemon = socket_activated(config, workdir, socket_port)
    try:
        assert "ocicache" not in daemon.log_text(), "the daemon started before any connection"
        image = upstream.images["oci"]
        # The first connection starts the daemon; it waits in the backlog.
        status, headers, body = http_request(
            f"http://127.0.0.1:{socket_port}/v2/{image.repo}/manifests/{image.tag}",
            headers={"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}, timeout=60)
        assert status == 200, body
        assert body == image.manifest_bytes
        assert headers["server"].startswith("ocicache/")
        blob = image.blobs[-1]
        status, _, body = http_request(f"http://127.0.0.1:{socket_port}/v2/{image.repo}/blobs/{blob.digest}")
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
        # --listen replaced [server] listen.
        assert socket_refuses(config_port)
        assert daemon.proc.poll() is None
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == -signal.SIGTERM
    finally:
        daemon.stop()
    log = daemon.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "ocicache stopped" in log
