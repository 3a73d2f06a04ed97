"""
Graceful stop: on SIGTERM the daemon stops accepting connections, lets
transfers in flight finish for up to C{[server] drain_timeout}, cuts the
rest, leaves no temp file, closes its database and exits (twistd re-raises the SIGTERM it handled).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.ops import socket_refuses
from ocitest.registry import Registry
from ocitest.slow_client import SlowClient

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _drain_config(metrics_port: int, drain_timeout: str) -> dict[str, object]:
    return {
        "server_extra": {"drain_timeout": drain_timeout},
        "extra_tables": {"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}},
    }


def _assert_stopped_cleanly(daemon: Daemon) -> None:
    assert daemon.cache_dir is not None
    tmp = os.path.join(daemon.cache_dir, "tmp")
    assert os.listdir(tmp) == [], f"temp files left: {os.listdir(tmp)}"
    # SQLite removes the WAL when the last connection closes cleanly.
    assert not os.path.exists(os.path.join(daemon.cache_dir, "metadata.sqlite-wal"))
    log = daemon.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "ocicache stopped" in log


def test_sigterm_lets_a_slow_transfer_finish(
    daemon_factory: Callable[..., Daemon], upstream: Registry
) -> None:
    metrics_port = free_port()
    daemon = daemon_factory(**_drain_config(metrics_port, "30s"))
    big = upstream.images["big64"]
    layer = big.layers[0]
    assert layer.size == 64 * MiB
    # About 4 s of reading.
    client = SlowClient(daemon.port, f"/v2/{big.repo}/blobs/{layer.digest}", rate=16 * MiB)
    client.start()
    assert client.started_body.wait(30) and client.error is None and client.status == 200
    wait_for(lambda: client.received >= 4 * MiB, timeout=30, what="the client to be reading")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)

    # New connections are refused at once; the operator listener says why.
    wait_for(lambda: socket_refuses(daemon.port), timeout=10, what="the registry port to close")
    status, _, body = http_request(f"http://127.0.0.1:{metrics_port}/readyz")
    assert status == 503 and b"draining" in body
    # An impatient second SIGTERM is said, not acted on twice: the drain goes on.
    daemon.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "Received SIGTERM while stopping" in daemon.log_text(), timeout=10,
             what="the second SIGTERM logged")
    assert client.received < layer.size, "the transfer finished before the test could check the drain"
    assert daemon.proc.poll() is None, "the daemon exited with a transfer in flight"

    client.join(60)
    assert not client.is_alive()
    assert client.error is None, client.error
    assert not client.closed_early and client.received == layer.size == client.length
    assert "sha256:" + client.hasher.hexdigest() == layer.digest

    assert daemon.proc.wait(30) == -signal.SIGTERM
    daemon.stop()
    _assert_stopped_cleanly(daemon)
    assert "Draining 1 connection(s)" in daemon.log_text()
    assert "Drain timeout" not in daemon.log_text()


def test_drain_timeout_cuts_a_stalled_client(
    daemon_factory: Callable[..., Daemon], upstream: Registry, hop: Hop
) -> None:
    """
    A client that stops reading is cut after drain_timeout; the download it
    started (slow upstream) is abandoned and leaves no temp file.
    """
    metrics_port = free_port()
    daemon = daemon_factory(**_drain_config(metrics_port, "1s"))
    big = upstream.images["big64"]
    layer = big.layers[0]
    hop.throttle = 8 * MiB  # 8 s for the whole blob
    client = SlowClient(daemon.port, f"/v2/{big.repo}/blobs/{layer.digest}", rate=0)
    client.start()
    assert client.started_body.wait(30) and client.error is None and client.status == 200
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == -signal.SIGTERM
    daemon.stop()
    client.stop_reading.set()
    client.join(10)
    _assert_stopped_cleanly(daemon)
    log = daemon.log_text()
    assert "Drain timeout: cutting 1 connection(s)" in log
    assert daemon.cache_dir is not None
    hex_ = layer.digest.split(":")[1]
    assert not os.path.exists(os.path.join(daemon.cache_dir, "blobs", "sha256", hex_[:2], hex_))


def test_sigterm_when_idle_exits_at_once(daemon_factory: Callable[..., Daemon], upstream: Registry) -> None:
    """
    Idle keep-alive connections do not hold the stop up.
    """
    daemon = daemon_factory()
    oci = upstream.images["oci"]
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall(f"GET /v2/{oci.repo}/blobs/{oci.blobs[0].digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.settimeout(10)
    data = b""
    # The whole response, headers and body: the connection is then idle.
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < oci.blobs[0].size:
        data += sock.recv(65536)
    assert data.partition(b"\r\n\r\n")[2] == oci.blobs[0].data
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == -signal.SIGTERM
    daemon.stop()
    assert sock.recv(1) == b""  # closed by the server
    sock.close()
    _assert_stopped_cleanly(daemon)
