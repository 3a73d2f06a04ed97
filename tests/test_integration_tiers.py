"""
Tiers: host-local ocicache edges in front of one regional ocicache in
front of the registry.  Real processes throughout: two edges, the
regional, the real upstream (docker-registry) and a counting hop on each
side of the regional, with containerd's C{ctr} pulling through both edges
at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocitest import http_request
from ocitest.containerd import Containerd, write_hosts_dir
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)


@pytest.fixture
def regional_hop(daemon: Daemon) -> Iterator[Hop]:
    """A counting hop in front of the regional ocicache (the C{daemon})."""
    hop = Hop(daemon.url).start()
    yield hop
    hop.stop()


def _edge(daemon_factory: Callable[..., Daemon], regional: Hop, **extra: object) -> Daemon:
    mirror = {"kind": "mirror", **extra}
    return daemon_factory(tag_ttl="1s", upstreams=[
        Upstream("docker.io", regional.url, default=True, extra=dict(mirror)),
        Upstream("ghcr.io", regional.url, extra=dict(mirror)),
    ])


def test_two_edges_pull_through_one_regional(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop, regional_hop: Hop,
        daemon_factory: Callable[..., Daemon], containerd_factory: Callable[[], Containerd],
        tmp_path: Path) -> None:
    image = ocitest_images["index"]
    platform_image = image.for_platform("amd64")
    edges = [_edge(daemon_factory, regional_hop) for _ in range(2)]
    ref = f"docker.io/{image.repo}:{image.tag}"
    clients = [containerd_factory() for _ in edges]
    errors: list[BaseException] = []

    def pull(ctrd: Containerd, edge: Daemon, index: int) -> None:
        hosts = write_hosts_dir(str(tmp_path / f"hosts{index}"), "docker.io", edge.url)
        try:
            ctrd.pull(ref, hosts_dir=hosts)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=pull, args=(ctrd, edge, i))
               for i, (ctrd, edge) in enumerate(zip(clients, edges, strict=True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, f"{errors[0]}\n--- edge log ---\n{edges[0].log_tail(30)}"
    # Both edges got identical digests, the registry's own.
    for ctrd in clients:
        assert ctrd.image_digest(ref) == image.manifest_digest
        assert ctrd.content_get(platform_image.manifest_digest) == platform_image.manifest_bytes
        content = ctrd.content_digests()
        assert {blob.digest for blob in platform_image.blobs} <= content
    hop.wait_idle()
    regional_hop.wait_idle()
    for blob in platform_image.blobs:
        # Each blob reached the regional once (the edges' misses collapsed
        # there) and the registry once.
        assert regional_hop.count("GET", f"/blobs/{blob.digest}") == 2, regional_hop.summary()
        assert hop.count("GET", f"/blobs/{blob.digest}") == 1, hop.summary()
    # The regional was told which registry every request was for.
    for request in regional_hop.requests:
        assert request.params.get("ns") == ["docker.io"], request
        assert request.path.startswith(f"/v2/{image.repo}/"), request


def test_edges_reach_every_registry_through_the_regional(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop, regional_hop: Hop,
        daemon_factory: Callable[..., Daemon]) -> None:
    """An edge's ghcr.io goes to the regional's ghcr.io, not its default."""
    image = ocitest_images["oci"]
    edge = _edge(daemon_factory, regional_hop)
    path = f"/v2/ghcr.io/{image.repo}/manifests/{image.tag}"
    status, headers, body = http_request(edge.url + path, headers={"Accept": ACCEPT})
    assert status == 200 and body == image.manifest_bytes
    assert regional_hop.count("GET", "/manifests/") == 1
    assert regional_hop.requests[0].params.get("ns") == ["ghcr.io"]
    # The regional routed it to its own ghcr.io upstream: the registry saw
    # the repository as named, without docker.io's library/ rule applied.
    assert [r.path.split("?")[0] for r in hop.matching("GET", "/manifests/")] == [
        f"/v2/{image.repo}/manifests/{image.tag}"]


def test_an_edge_serves_what_it_holds_with_the_regional_down(
        ocitest_images: dict[str, Image], daemon: Daemon, regional_hop: Hop,
        daemon_factory: Callable[..., Daemon]) -> None:
    image = ocitest_images["oci"]
    edge = _edge(daemon_factory, regional_hop)
    manifest = f"/v2/{image.repo}/manifests/{image.tag}"
    assert http_request(edge.url + manifest, headers={"Accept": ACCEPT})[0] == 200
    for blob in image.blobs:
        status, _, body = http_request(edge.url + f"/v2/{image.repo}/blobs/{blob.digest}")
        assert status == 200 and body == blob.data
    regional_hop.stop()
    time.sleep(1.2)  # past the edge's tag_ttl: the tag must be revalidated
    status, headers, body = http_request(edge.url + manifest, headers={"Accept": ACCEPT})
    assert status == 200 and body == image.manifest_bytes
    assert "Serving stale" in edge.log_text()
    for blob in image.blobs:
        status, _, body = http_request(edge.url + f"/v2/{image.repo}/blobs/{blob.digest}")
        assert status == 200 and body == blob.data


def test_an_edge_sends_its_static_token_to_the_regional(
        ocitest_images: dict[str, Image], daemon: Daemon, regional_hop: Hop,
        daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    image = ocitest_images["oci"]
    token_file = tmp_path / "regional.token"
    token_file.write_text("edge-token-4e1d\n")
    edge = _edge(daemon_factory, regional_hop, token_file=str(token_file))
    status, _, _ = http_request(edge.url + f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": ACCEPT})
    assert status == 200
    blob = image.blobs[0]
    assert http_request(edge.url + f"/v2/{image.repo}/blobs/{blob.digest}")[2] == blob.data
    assert regional_hop.count() >= 2
    for request in regional_hop.requests:
        sent = {name.lower(): value for name, value in request.headers.items()}
        assert sent.get("authorization") == "Bearer edge-token-4e1d", request
    assert "edge-token-4e1d" not in edge.log_text()


CHAINED = 'set kind = "mirror" in this [[upstream]]'


def test_an_ocicache_upstream_not_configured_as_a_mirror_is_named_once(
        ocitest_images: dict[str, Image], daemon: Daemon, daemon_factory: Callable[..., Daemon]) -> None:
    """
    An edge configured the old way (no C{kind = "mirror"}) in front of a
    regional ocicache: its first contact logs one warning naming the fix,
    however many requests follow; a mirror-tier edge logs none.
    """
    image = ocitest_images["oci"]
    old = daemon_factory(upstreams=[Upstream("docker.io", daemon.url, default=True)])
    tier_upstream = daemon_factory(upstreams=[Upstream("docker.io", daemon.url, default=True,
                                                       extra={"kind": "mirror"})])
    for edge in (old, tier_upstream):
        for path in (f"/v2/{image.repo}/manifests/{image.tag}", f"/v2/{image.repo}/blobs/{image.blobs[0].digest}",
                     f"/v2/{image.repo}/manifests/no-such-tag", f"/v2/{image.repo}/tags/list"):
            status = http_request(edge.url + path, headers={"Accept": ACCEPT})[0]
            assert status in (200, 404), (path, status)
    warnings = [line for line in old.log_text().splitlines() if CHAINED in line]
    assert len(warnings) == 1, old.log_tail()
    assert daemon.url in warnings[0] and "ocicache/" in warnings[0]
    assert CHAINED not in tier_upstream.log_text()
    assert CHAINED not in daemon.log_text()
