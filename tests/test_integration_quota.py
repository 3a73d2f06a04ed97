"""
Docker Hub quota awareness through the real daemon, with distribution as the
upstream and the hop playing Docker Hub: rate-limit headers on its answers,
and canned 429s.

  - A 429 leaves the upstream alone until its Retry-After passes, while
    everything cached (stale tags, manifests, blobs) is still served and
    only what the cache lacks gets 429 with Retry-After.
  - A pull-limit 429 (with rate-limit headers) is told from another 429,
    and a restart does not ask again before the window allows.
  - Below quota_floor, tags are revalidated only every quota_stretch; the
    gauges show what the upstream said.
  - Pull-equivalents made and saved, in /metrics and in ocicache stats.
  - A mirror tier's 429 is passed on per request: a limited regional still
    serves its edges what it holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

import pytest

from ocitest import SRC_ROOT, free_port, http_request, wait_for
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop, HopRequest
from ocitest.images import MEDIA, Image, sha256_digest
from ocitest.ops import metric_value, scrape

pytestmark = pytest.mark.integration

_ACCEPT = {"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}


def _start(daemon_factory: Callable[..., Daemon], hop: Hop, tag_ttl: str = "1s",
           cache_extra: Mapping[str, object] | None = None, **upstream: object) -> tuple[Daemon, str]:
    port = free_port()
    daemon = daemon_factory(
        tag_ttl=tag_ttl,
        cache_extra=cache_extra,
        upstreams=[Upstream("docker.io", hop.url, default=True, extra=dict(upstream))],
        extra_tables={"metrics": {"listen": f"tcp:{port}:interface=127.0.0.1"}},
    )
    return daemon, f"http://127.0.0.1:{port}/metrics"


def _manifest(daemon: Daemon, image: Image, reference: str | None = None,
              method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return http_request(f"{daemon.url}/v2/docker.io/{image.repo}/manifests/{reference or image.reference}",
                        method=method, headers=_ACCEPT)


def _blob(daemon: Daemon, image: Image, digest: str) -> tuple[int, dict[str, str], bytes]:
    return http_request(f"{daemon.url}/v2/docker.io/{image.repo}/blobs/{digest}")


def _skopeo_copy(skopeo: str, daemon: Daemon, image: Image, dest: str) -> None:
    command = [skopeo, "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
               f"docker://{daemon.host}/{image.repo}:{image.tag}", f"dir:{dest}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n--- ocicache log ---\n{daemon.log_tail(40)}"
    with open(os.path.join(dest, "manifest.json"), "rb") as f:
        assert f.read() == image.manifest_bytes
    for blob in image.all_blobs():
        with open(os.path.join(dest, blob.hex), "rb") as f:
            assert sha256_digest(f.read()) == blob.digest


def _docker_hub(remaining: Mapping[str, int]) -> Callable[[HopRequest], dict[str, str]]:
    """Docker Hub's rate-limit headers, on manifest answers, GET and HEAD alike."""

    def headers(request: HopRequest) -> dict[str, str]:
        if "/manifests/" not in request.path:
            return {}
        return {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": f"{remaining['n']};w=21600",
                "docker-ratelimit-source": "192.0.2.1"}

    return headers


def test_a_rate_limited_upstream_is_left_alone_while_the_cache_serves(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop, skopeo: str,
        tmp_path: os.PathLike[str]) -> None:
    cached, uncached = ocitest_images["oci"], ocitest_images["team"]
    daemon, metrics = _start(daemon_factory, hop)
    _skopeo_copy(skopeo, daemon, cached, os.path.join(tmp_path, "before"))
    # A restart: what the repository has shown it may read is in the
    # metadata database now, not in memory.
    daemon.stop()
    daemon.start()
    time.sleep(1.2)  # past tag_ttl: the next pull of the tag revalidates
    hop.reset()
    hop.answer(429, {"Retry-After": "4"})
    limited_at = time.monotonic()

    # The revalidation HEAD gets the 429: the cached tag answers 200, stale.
    status, _, body = _manifest(daemon, cached)
    assert status == 200 and body == cached.manifest_bytes
    assert hop.count() == 1 and hop.count("HEAD", "/manifests/", status=429) == 1, hop.summary()

    # Limited: the whole cached image pulls, without a single upstream request.
    _skopeo_copy(skopeo, daemon, cached, os.path.join(tmp_path, "limited"))
    # What the cache lacks: 429 with the seconds left, manifests and blobs alike.
    for status, headers, _ in (_manifest(daemon, uncached), _manifest(daemon, uncached, method="HEAD"),
                               _blob(daemon, uncached, uncached.layers[0].digest)):
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 4, (status, headers)
    assert b"TOOMANYREQUESTS" in _manifest(daemon, uncached)[2]
    assert hop.count() == 1, hop.summary()
    assert metric_value(scrape(metrics), "ocicache_upstream_ratelimited", upstream="docker.io") == 1

    # Once the Retry-After has passed, requests go upstream again.
    hop.clear_answers()
    time.sleep(max(0.0, limited_at + 4.2 - time.monotonic()))
    status, _, body = _manifest(daemon, uncached)
    assert status == 200 and body == uncached.manifest_bytes
    assert hop.count("GET", f"/{uncached.repo}/manifests/", status=200) == 1, hop.summary()
    assert metric_value(scrape(metrics), "ocicache_upstream_ratelimited", upstream="docker.io") == 0
    log = daemon.log_text()
    assert log.count("rate limited (429 without rate-limit headers)") == 1
    assert log.count("no longer rate limited") == 1


@pytest.mark.parametrize(("headers", "retry_after", "said"), [
    # Docker Hub's pull limit: its rate-limit headers, remaining at 0; no
    # Retry-After, so the window.
    ({"ratelimit-limit": "100;w=30", "ratelimit-remaining": "0;w=30"}, 30, "pull rate limit reached"),
    # Anything else (an abuse limit, a proxy): a short, bounded back-off.
    ({}, 60, "rate limited (429 without rate-limit headers)"),
])
def test_a_pull_limit_is_told_from_another_429(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop,
        headers: dict[str, str], retry_after: int, said: str) -> None:
    image = ocitest_images["oci"]
    daemon, _ = _start(daemon_factory, hop)
    hop.answer(429, headers, path_contains="/manifests/", message="You have reached your pull rate limit.")
    status, answered, _ = _manifest(daemon, image)
    assert status == 429 and int(answered["retry-after"]) == retry_after, answered
    # The next request waits for the window: no upstream request.
    status, answered, _ = _blob(daemon, image, image.layers[0].digest)
    assert status == 429 and retry_after - 2 <= int(answered["retry-after"]) <= retry_after
    assert hop.count() == 1, hop.summary()
    assert daemon.log_text().count(said) == 1
    # Nor after a restart: the state is kept in the metadata database.
    daemon.stop()
    daemon.start()
    status, answered, _ = _manifest(daemon, image)
    assert status == 429 and retry_after - 5 <= int(answered["retry-after"]) <= retry_after
    assert hop.count() == 1, hop.summary()
    assert "still rate limited from the last run" in daemon.log_text()


def test_below_the_quota_floor_tags_are_revalidated_less(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image, other = ocitest_images["oci"], ocitest_images["team"]
    remaining = {"n": 5}
    hop.response_headers = _docker_hub(remaining)
    daemon, metrics = _start(daemon_factory, hop, quota_floor=10, quota_stretch="1h")
    assert _manifest(daemon, image)[0] == 200
    text = scrape(metrics)
    assert metric_value(text, "ocicache_upstream_ratelimit_limit", upstream="docker.io") == 100
    assert metric_value(text, "ocicache_upstream_ratelimit_remaining", upstream="docker.io") == 5
    assert metric_value(text, "ocicache_upstream_ratelimit_window_seconds", upstream="docker.io") == 21600
    assert metric_value(text, "ocicache_upstream_ratelimited", upstream="docker.io") == 0

    # 5 left, below the floor of 10: past tag_ttl, no revalidation HEAD.
    time.sleep(1.2)
    status, _, body = _manifest(daemon, image)
    assert status == 200 and body == image.manifest_bytes
    assert hop.count("HEAD", "/manifests/") == 0, hop.summary()

    # The upstream says 50 left (on another pull): tags revalidate after tag_ttl again.
    remaining["n"] = 50
    assert _manifest(daemon, other)[0] == 200
    assert metric_value(scrape(metrics), "ocicache_upstream_ratelimit_remaining", upstream="docker.io") == 50
    assert _manifest(daemon, image)[0] == 200
    assert hop.count("HEAD", f"/{image.repo}/manifests/") == 1, hop.summary()
    log = daemon.log_text()
    assert log.count("below quota_floor") == 1 and log.count("above quota_floor again") == 1


def _ocicache(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ocicache", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_pull_equivalents_made_and_saved(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    hop.response_headers = _docker_hub({"n": 76})
    daemon, metrics = _start(daemon_factory, hop, cache_extra={"janitor_interval": "1s"})
    assert _manifest(daemon, image)[0] == 200  # made: the upstream GET
    for _ in range(3):
        assert _manifest(daemon, image)[0] == 200  # saved: hits
    assert _manifest(daemon, image, method="HEAD")[0] == 200  # neither: HEADs are free
    time.sleep(1.2)
    assert _manifest(daemon, image)[0] == 200  # saved: revalidated by a HEAD
    assert _manifest(daemon, image, image.manifest_digest)[0] == 200  # saved: by digest, a hit
    assert hop.count("GET", "/manifests/") == 1 and hop.count("HEAD", "/manifests/") == 1, hop.summary()
    text = scrape(metrics)
    assert metric_value(text, "ocicache_pull_equivalents_total", upstream="docker.io", outcome="made") == 1
    assert metric_value(text, "ocicache_pull_equivalents_total", upstream="docker.io", outcome="saved") == 5

    # Written to the metadata by the janitor's passes, and at stop, each
    # pull counted once; read offline by ocicache stats.
    def counted() -> tuple[int, int] | None:
        stats = _ocicache("stats", "--json", "--config", daemon.config_path)
        assert stats.returncode == 0, stats.stderr
        entries = json.loads(stats.stdout)["upstreams"]
        return (entries[0]["pulls_made"], entries[0]["pulls_saved"]) if entries else None

    wait_for(lambda: counted() == (1, 5), timeout=15, what="a janitor pass to write the pull counts")
    daemon.stop()
    stats = _ocicache("stats", "--json", "--config", daemon.config_path)
    assert stats.returncode == 0, stats.stderr
    [entry] = json.loads(stats.stdout)["upstreams"]
    assert entry["upstream"] == "docker.io"
    assert (entry["pulls_made"], entry["pulls_saved"]) == (1, 5)
    ratelimit = entry["ratelimit"]
    assert (ratelimit["limit"], ratelimit["remaining"], ratelimit["window_seconds"], ratelimit["source"]) == (
        100, 76, 21600, "192.0.2.1")
    assert ratelimit["limited_for_seconds"] == 0
    text_stats = _ocicache("stats", "--config", daemon.config_path)
    assert text_stats.returncode == 0, text_stats.stderr
    assert "docker.io: 1 made upstream, 5 saved" in text_stats.stdout
    assert "rate limit: 76 of 100 left per 6.0h for 192.0.2.1" in text_stats.stdout


def test_a_limited_regional_still_serves_its_edges_what_it_holds(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    held, lacking = ocitest_images["oci"], ocitest_images["team"]
    regional, _ = _start(daemon_factory, hop)
    assert _manifest(regional, held)[0] == 200
    for blob in held.blobs:
        assert _blob(regional, held, blob.digest)[0] == 200
    hop.reset()
    hop.answer(429, {"Retry-After": "30"})
    edge = daemon_factory(tag_ttl="1s", upstreams=[
        Upstream("docker.io", regional.url, default=True, extra={"kind": "mirror"})])
    # The regional lacks it: its 429 reaches the edge's client, Retry-After and all.
    status, headers, _ = _manifest(edge, lacking)
    assert status == 429 and 25 <= int(headers["retry-after"]) <= 30, headers
    # The edge does not leave the regional alone for it: what the regional
    # holds still comes through, though the registry is not asked.
    status, _, body = _manifest(edge, held)
    assert status == 200 and body == held.manifest_bytes
    for blob in held.blobs:
        status, _, body = _blob(edge, held, blob.digest)
        assert status == 200 and sha256_digest(body) == blob.digest
    assert hop.count() == 1, hop.summary()
