"""
The circuit breaker and the offline switch (issue 22, part 4), against a
real docker-registry whose token server (L{ocitest.ops.TokenServer})
answers 401 to every anonymous token request: however many clients ask,
for a minute, the token server is called a bounded number of times, the
circuit's opening is logged once and shows in the metrics; and an
upstream switched offline by a SIGHUP is never called while the cache
serves what it holds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon, Upstream, start_daemon, write_config
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.ops import AuxRegistry, TokenServer, metric_value, scrape
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = {"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}


@pytest.fixture
def refusing_registry(tmp_path: os.PathLike[str], upstream: Registry) -> Iterator[tuple[AuxRegistry, TokenServer]]:
    """Token auth whose token server refuses everyone: ocicache has no credentials for it."""
    tokens = TokenServer(os.path.join(str(tmp_path), "tokens"), "somebody", "not-ocicache").start()
    try:
        with AuxRegistry(os.path.join(str(tmp_path), "registry"), upstream.storage,
                         auth_yaml=tokens.registry_auth_yaml()) as registry:
            yield registry, tokens
    finally:
        tokens.stop()


def test_an_upstream_refusing_every_token_is_called_a_bounded_number_of_times(
    tmp_path: os.PathLike[str], refusing_registry: tuple[AuxRegistry, TokenServer],
    ocitest_images: dict[str, Image],
) -> None:
    """
    Twelve clients over four repositories ask without pause for 65 s: the
    first failures open the circuit (5 in a row), and then one probe
    goes after 10 s and another 20 s later (the third is due at 70 s).
    Without the breaker, every client request is a token request.
    """
    registry, tokens = refusing_registry
    metrics_port = free_port()
    daemon = start_daemon(os.path.join(str(tmp_path), "daemon"), [Upstream("docker.io", registry.url, default=True)],
                          extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
    try:
        paths = [f"/v2/{image.repo}/manifests/{image.tag}" for image in
                 (ocitest_images[name] for name in ("oci", "team", "big1", "list"))]
        statuses: list[int] = []
        stop_at = time.monotonic() + 65

        def client(path: str) -> None:
            while time.monotonic() < stop_at:
                status, _, body = http_request(daemon.url + path, headers=ACCEPT)
                statuses.append(status)
                assert b"UNAUTHORIZED" in body, body[:300]

        threads = [threading.Thread(target=client, args=(paths[i % len(paths)],)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(statuses) > 500 and set(statuses) == {401}, (len(statuses), set(statuses))
        # At most one token request per repository in flight before the
        # circuit opened (a second round at worst), then the two probes.
        assert 1 <= len(tokens.requests) <= 2 * len(paths) + 2, len(tokens.requests)
        log = daemon.log_text()
        assert log.count("docker.io: circuit open after") == 1, log[-3000:]
        assert "Traceback" not in log
        text = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metric_value(text, "ocicache_upstream_circuit_open", upstream="docker.io") == 1
        assert metric_value(text, "ocicache_upstream_circuit_changes_total", upstream="docker.io", to="opened") == 1
    finally:
        daemon.stop()


def _reload(daemon: Daemon) -> None:
    before = len(daemon.log_text().splitlines())
    assert daemon.pid is not None
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: "Config reloaded" in "\n".join(daemon.log_text().splitlines()[before:]), 15,
             what="the reload")


def test_offline_serves_the_cache_and_never_calls_the_upstream(
    daemon_factory: Callable[..., Daemon], hop: Hop, ocitest_images: dict[str, Image], tmp_path: os.PathLike[str],
) -> None:
    image, other = ocitest_images["oci"], ocitest_images["team"]
    daemon = daemon_factory(upstreams=[Upstream("docker.io", hop.url, default=True)])
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.manifest_digest}", headers=ACCEPT)
    assert status == 200 and body == image.manifest_bytes
    blob = image.blobs[-1]
    assert http_request(f"{daemon.url}/v2/{image.repo}/blobs/{blob.digest}")[0] == 200

    # The same file, offline: a SIGHUP applies it.
    write_config(daemon.config_path, port=daemon.port, cache_dir=daemon.cache_dir,
                 upstreams=[Upstream("docker.io", hop.url, default=True, extra={"offline": True})])
    _reload(daemon)
    assert "docker.io: offline: serving only what the cache holds" in daemon.log_text()
    hop.reset()
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/manifests/{image.manifest_digest}", headers=ACCEPT)
    assert status == 200 and body == image.manifest_bytes
    status, _, body = http_request(f"{daemon.url}/v2/{image.repo}/blobs/{blob.digest}")
    assert status == 200 and len(body) == blob.size
    status, headers, body = http_request(f"{daemon.url}/v2/{other.repo}/manifests/{other.tag}", headers=ACCEPT)
    assert status == 502 and headers["content-type"] == "application/json", (status, body)
    error = json.loads(body)["errors"][0]
    assert error["code"] == "UPSTREAM_UNAVAILABLE" and "docker.io is offline" in error["message"], error
    assert hop.count() == 0

    write_config(daemon.config_path, port=daemon.port, cache_dir=daemon.cache_dir,
                 upstreams=[Upstream("docker.io", hop.url, default=True)])
    _reload(daemon)
    status, _, body = http_request(f"{daemon.url}/v2/{other.repo}/manifests/{other.tag}", headers=ACCEPT)
    assert status == 200 and body == other.manifest_bytes
    assert hop.count() >= 1
