"""
Metrics, health endpoints, access events and the Server header, through
the real daemon against the real upstream (behind the counting hop).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable

import pytest

from ocicache import __version__
from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA
from ocitest.ops import metric_value, scrape
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)
MiB = 1 << 20


def _metrics_config(port: int) -> dict[str, dict[str, object]]:
    return {"metrics": {"listen": f"tcp:{port}:interface=127.0.0.1"}}


def _get_blob(url: str, results: list[tuple[int, str, int]]) -> None:
    status, _, body = http_request(url, timeout=120)
    results.append((status, "sha256:" + hashlib.sha256(body).hexdigest(), len(body)))


def test_metrics_in_a_realistic_flow(
    daemon_factory: Callable[..., Daemon], hop: Hop, upstream: Registry
) -> None:
    """
    Misses, hits, a coalesced download, a stale manifest and errors each
    move their series; upstream, size and duration series fill in too.
    """
    metrics_port = free_port()
    daemon = daemon_factory(tag_ttl="1s", extra_tables=_metrics_config(metrics_port),
                            server_extra={"log_format": "json"})
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    oci = upstream.images["oci"]
    big = upstream.images["big64"]
    manifest_url = f"{daemon.url}/v2/{oci.repo}/manifests/{oci.tag}"

    # Misses, then hits.
    for round in range(2):
        status, headers, body = http_request(manifest_url, headers={"Accept": ACCEPT})
        assert status == 200 and body == oci.manifest_bytes
        for blob in oci.blobs:
            status, _, body = http_request(f"{daemon.url}/v2/{oci.repo}/blobs/{blob.digest}")
            assert status == 200 and len(body) == blob.size
        if round == 0:
            # A client has every byte once they are verified, a moment
            # before the commit's rename: the hits come after it.
            wait_for(lambda: all(os.path.exists(_stored(daemon, blob.hex)) for blob in oci.blobs),
                     timeout=30, what="the blobs committed")

    # Four concurrent clients on one cold, slow download: one miss, three
    # coalesced.
    hop.throttle = 48 * MiB
    layer = big.layers[0]
    blob_url = f"{daemon.url}/v2/{big.repo}/blobs/{layer.digest}"
    results: list[tuple[int, str, int]] = []
    first = threading.Thread(target=_get_blob, args=(blob_url, results))
    first.start()
    wait_for(lambda: any(layer.digest in r.path and r.method == "GET" for r in hop.in_flight()),
             timeout=20, what="the download to start upstream")
    inflight = metric_value(scrape(metrics_url), "ocicache_inflight_downloads")
    joiners = [threading.Thread(target=_get_blob, args=(blob_url, results)) for _ in range(3)]
    for joiner in joiners:
        joiner.start()
    for thread in [first, *joiners]:
        thread.join(120)
    hop.throttle = None
    assert [r[:2] for r in results] == [(200, layer.digest)] * 4
    assert inflight == 1
    assert hop.count("GET", layer.digest) == 1

    # The tag's TTL runs out while the upstream is down: stale.
    time.sleep(1.2)
    hop.down = True
    status, _, body = http_request(manifest_url, headers={"Accept": ACCEPT})
    hop.down = False
    assert status == 200 and body == oci.manifest_bytes

    # Errors: outside /v2/, and a manifest the upstream does not know.
    assert http_request(f"{daemon.url}/favicon.ico")[0] == 404
    assert http_request(f"{daemon.url}/v2/{oci.repo}/manifests/nope", headers={"Accept": ACCEPT})[0] == 404

    text = scrape(metrics_url)
    for kind, result in [("manifest", "miss"), ("manifest", "hit"), ("manifest", "stale"),
                         ("blob", "miss"), ("blob", "hit"), ("blob", "coalesced")]:
        assert metric_value(text, "ocicache_cache_requests_total", kind=kind, result=result) >= 1, (kind, result)
    assert metric_value(text, "ocicache_bytes_served_total", source="upstream") >= layer.size
    assert metric_value(text, "ocicache_bytes_served_total", source="cache") >= 3 * layer.size
    assert metric_value(text, "ocicache_cache_requests_total", kind="blob", result="coalesced") == 3
    assert metric_value(text, "ocicache_http_requests_total", route="manifests", method="GET", code="200") >= 3
    assert metric_value(text, "ocicache_http_requests_total", route="manifests", method="GET", code="404") == 1
    assert metric_value(text, "ocicache_http_requests_total", route="blobs", method="GET", code="200") >= 8
    assert metric_value(text, "ocicache_http_requests_total", route="other", method="GET", code="404") == 1
    assert metric_value(text, "ocicache_http_request_duration_seconds_count", route="blobs") >= 8
    assert metric_value(text, "ocicache_http_request_duration_seconds_sum", route="blobs") > 0
    assert metric_value(text, "ocicache_upstream_requests_total",
                        upstream="docker.io", kind="manifest", code="200") >= 1
    assert metric_value(text, "ocicache_upstream_requests_total",
                        upstream="docker.io", kind="manifest", code="503") >= 1
    assert metric_value(text, "ocicache_upstream_requests_total",
                        upstream="docker.io", kind="blob", code="200") >= len(oci.blobs) + 1
    assert metric_value(text, "ocicache_upstream_bytes_total", upstream="docker.io") == \
        layer.size + sum(blob.size for blob in oci.blobs)
    assert metric_value(text, "ocicache_upstream_request_duration_seconds_count", upstream="docker.io") >= 3
    assert metric_value(text, "ocicache_inflight_downloads") == 0
    assert metric_value(text, "ocicache_waiting_clients") == 0
    assert metric_value(text, "ocicache_cache_entries", kind="blob") == len(oci.blobs) + 1
    assert metric_value(text, "ocicache_cache_entries", kind="manifest") == 1
    assert metric_value(text, "ocicache_cache_size_bytes") == \
        layer.size + sum(blob.size for blob in oci.blobs) + len(oci.manifest_bytes)

    # The operator endpoints.
    assert http_request(f"http://127.0.0.1:{metrics_port}/healthz")[::2] == (200, b"ok\n")
    assert http_request(f"http://127.0.0.1:{metrics_port}/readyz")[::2] == (200, b"ready\n")
    # The registry port serves no metrics.
    assert http_request(f"{daemon.url}/metrics")[0] == 404

    # One JSON access event per request, with its fields.
    events = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]
    access = [e for e in events if e["namespace"] == "ocicache.access"]
    assert all({"method", "path", "status", "bytes", "duration", "cache_result", "upstream"} <= set(e)
               for e in access)
    big_gets = [e for e in access if e["path"].endswith(layer.digest)]
    assert sorted(e["cache_result"] for e in big_gets) == ["coalesced"] * 3 + ["miss"]
    assert all(e["bytes"] == layer.size and e["status"] == 200 for e in big_gets)
    manifest_events = [e for e in access if e["path"] == f"/v2/{oci.repo}/manifests/{oci.tag}"]
    assert [e["cache_result"] for e in manifest_events] == ["miss", "hit", "stale"]
    assert all(e["bytes"] == len(oci.manifest_bytes) for e in manifest_events)
    assert [e["status"] for e in access if e["path"] == "/favicon.ico"] == [404]
    # Each request once: the base check plus the ones made here.
    assert len(access) == 1 + 2 * (1 + len(oci.blobs)) + 4 + 1 + 2 + 1


def test_server_header_names_the_version(daemon: Daemon, upstream: Registry) -> None:
    oci = upstream.images["oci"]
    for path in ("/v2/", f"/v2/{oci.repo}/manifests/{oci.tag}", "/nope", "/v2/x/y/manifests/missing"):
        _, headers, _ = http_request(daemon.url + path, headers={"Accept": ACCEPT})
        assert headers["server"] == f"ocicache/{__version__}", path


def test_readyz_fails_when_the_cache_dir_is_not_writable(
    daemon_factory: Callable[..., Daemon], tmp_path: object
) -> None:
    metrics_port = free_port()
    daemon = daemon_factory(extra_tables=_metrics_config(metrics_port))
    assert daemon.cache_dir is not None
    import os

    tmp = os.path.join(daemon.cache_dir, "tmp")
    os.rename(tmp, tmp + ".moved")
    try:
        status, _, body = http_request(f"http://127.0.0.1:{metrics_port}/readyz")
        assert status == 503 and b"cache directory is not writable" in body
    finally:
        os.rename(tmp + ".moved", tmp)


def _stored(daemon: Daemon, hex_digest: str) -> str:
    return os.path.join(daemon.cache_dir, "blobs", "sha256", hex_digest[:2], hex_digest)
