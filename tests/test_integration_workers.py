"""
C{[server] workers}: a main process holding the listeners and N worker
processes serving them from one store.  Against the real daemon and a
docker-registry upstream: each worker serves, the host's metrics are one
view, a worker that dies is started again while the others serve, SIGHUP
reloads every worker, SIGTERM drains every worker, the workers go with the
main process, and a socket from systemd is served by every worker.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from collections.abc import Callable

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon, Upstream, write_config
from ocitest.hop import Hop
from ocitest.ops import socket_activated, socket_refuses
from ocitest.registry import Registry
from ocitest.slow_client import SlowClient
from ocitest.workers import only, ready_workers, served_by, wait_ready, wait_settled

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _metrics(port: int) -> dict[str, float]:
    status, _, body = http_request(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _workers(daemon_factory: Callable[..., Daemon], metrics_port: int | None = None, **server: object) -> Daemon:
    tables = {} if metrics_port is None else {"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}}
    return daemon_factory(server_extra={"workers": 2, **server}, extra_tables=tables)


def test_each_worker_serves_and_metrics_are_the_hosts(
    daemon_factory: Callable[..., Daemon], upstream: Registry
) -> None:
    metrics_port = free_port()
    daemon = _workers(daemon_factory, metrics_port)
    pids = wait_ready(daemon.log_text, 2)
    assert sorted(pids) == [0, 1] and daemon.pid not in pids.values()
    blob = upstream.images["oci"].blobs[-1]
    path = f"/v2/{upstream.images['oci'].repo}/blobs/{blob.digest}"
    for index in (0, 1, 1):
        with only(pids, index):
            status, _, body = http_request(daemon.url + path)
            wait_settled(daemon.cache_dir)
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
    # The access log names the worker.
    wait_for(lambda: len(served_by(daemon.log_text(), path)) == 3, timeout=10, what="three access events")
    # (In the order the workers logged them, which is not the clients' order.)
    assert sorted(served_by(daemon.log_text(), path)) == [0, 1, 1]
    # Whichever worker a scrape reaches, it counts the host's requests
    # (asking the other: so none is stopped here).
    for _ in range(4):
        samples = _metrics(metrics_port)
        blob_gets = sum(value for name, value in samples.items()
                        if name.startswith("ocicache_http_requests_total{") and 'route="base"' not in name)
        assert blob_gets == 3, {name: value for name, value in samples.items() if "http_requests" in name}


def test_a_killed_worker_is_started_again_while_the_other_serves(
    daemon_factory: Callable[..., Daemon], upstream: Registry
) -> None:
    daemon = _workers(daemon_factory)
    pids = wait_ready(daemon.log_text, 2)
    os.kill(pids[1], signal.SIGKILL)
    # Meanwhile every request is answered, by worker 0.
    blob = upstream.images["oci"].blobs[0]
    path = f"/v2/{upstream.images['oci'].repo}/blobs/{blob.digest}"
    for _ in range(10):
        status, _, body = http_request(daemon.url + path, timeout=10)
        assert status == 200 and len(body) == blob.size
    wait_for(lambda: ready_workers(daemon.log_text).get(1, pids[1]) != pids[1], timeout=20,
             what="worker 1 started again")
    log = daemon.log_text()
    assert re.search(rf"Worker 1 \(pid {pids[1]}\) was killed by SIGKILL after [0-9.]+s; starting it again", log)
    restarted = ready_workers(daemon.log_text)
    assert restarted[0] == pids[0]
    wait_settled(daemon.cache_dir)
    with only(restarted, 1):
        status, _, _ = http_request(daemon.url + path)
    assert status == 200
    wait_for(lambda: served_by(daemon.log_text(), path).count(1) == 1, timeout=10,
             what="the new worker 1's access event")


def test_sighup_reloads_every_worker(daemon_factory: Callable[..., Daemon], tmp_path: os.PathLike[str]) -> None:
    daemon = _workers(daemon_factory)
    pids = wait_ready(daemon.log_text, 2)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log_text().count("Config reloaded from") == 2, timeout=20,
             what="both workers to reload")
    # The workers went on: none was restarted.
    assert ready_workers(daemon.log_text) == pids
    assert "Reloading 2 workers" in daemon.log_text()


def test_sigterm_drains_every_worker(daemon_factory: Callable[..., Daemon], upstream: Registry) -> None:
    daemon = _workers(daemon_factory, drain_timeout="30s")
    pids = wait_ready(daemon.log_text, 2)
    big = upstream.images["big64"]
    layer = big.layers[0]
    path = f"/v2/{big.repo}/blobs/{layer.digest}"
    # Stored first, so both transfers are hits, read at 16 MiB/s: about 4 s each.
    assert http_request(daemon.url + path)[0] == 200
    wait_settled(daemon.cache_dir)
    clients = []
    for index in (0, 1):
        with only(pids, index):
            client = SlowClient(daemon.port, path, rate=16 * MiB)
            client.start()
            assert client.started_body.wait(30) and client.error is None and client.status == 200
        clients.append(client)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: socket_refuses(daemon.port), timeout=10, what="the listener to close")
    assert all(client.received < layer.size for client in clients), "a transfer ended before the stop"
    for client in clients:
        client.join(60)
        assert client.error is None and not client.closed_early, client.error
        assert client.received == layer.size and "sha256:" + client.hasher.hexdigest() == layer.digest
    assert daemon.proc.wait(30) == -signal.SIGTERM
    daemon.stop()
    log = daemon.log_text()
    assert log.count("ocicache stopped\n") == 2 or log.count("] ocicache stopped") == 2, log[-3000:]
    assert "every worker has exited" in log
    assert "Traceback" not in log, log[-3000:]
    assert os.listdir(os.path.join(daemon.cache_dir, "tmp")) in ([], ["locks"])


def test_workers_end_with_the_main_process(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = _workers(daemon_factory)
    pids = wait_ready(daemon.log_text, 2)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    assert daemon.stop() == -signal.SIGKILL
    # The kernel tells each worker (PR_SET_PDEATHSIG): none keeps serving the listeners.
    wait_for(lambda: not ready_workers(daemon.log_text), timeout=20, what="the workers to exit")
    wait_for(lambda: socket_refuses(daemon.port), timeout=10, what="the listener to close")
    assert len(pids) == 2


def test_a_socket_from_systemd_is_served_by_every_worker(
    tmp_path: os.PathLike[str], hop: Hop, upstream: Registry
) -> None:
    workdir = str(tmp_path)
    socket_port, config_port = free_port(), free_port()
    config = write_config(os.path.join(workdir, "ocicache.toml"), port=config_port,
                          cache_dir=os.path.join(workdir, "cache"),
                          upstreams=[Upstream("docker.io", hop.url, default=True)],
                          server_extra={"workers": 2})
    daemon = socket_activated(config, workdir, socket_port)
    try:
        blob = upstream.images["oci"].blobs[-1]
        path = f"/v2/{upstream.images['oci'].repo}/blobs/{blob.digest}"
        # The first connection starts the daemon; it waits in the socket's queue.
        status, _, body = http_request(f"http://127.0.0.1:{socket_port}{path}", timeout=60)
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
        pids = wait_ready(daemon.log_text, 2)
        wait_settled(os.path.join(workdir, "cache"))
        for index in (0, 1):
            with only(pids, index):
                status, _, body = http_request(f"http://127.0.0.1:{socket_port}{path}")
            assert status == 200 and len(body) == blob.size
        wait_for(lambda: len(served_by(daemon.log_text(), path)) == 3, timeout=10, what="three access events")
        assert sorted(served_by(daemon.log_text(), path)[1:]) == [0, 1]
        assert socket_refuses(config_port)
        assert hop.count("GET", blob.digest) == 1
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == -signal.SIGTERM
    finally:
        daemon.stop()
    log = daemon.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "every worker has exited" in log
