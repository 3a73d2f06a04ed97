"""
Pinning and protection, against the real daemon and the real distribution
behind the counting hop: a pinned closure survives a fill of C{max_size}
while an unpinned image does not; a tag pin follows its tag; a pin that
cannot fit is refused; and an image being pulled keeps its layers
(C{protect_recent}).

The store is filled with blobs fetched by digest, with no manifest: only
pins and recently read manifests protect anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon, DaemonPool, daemon_env
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image, oci_image
from ocitest.ops import metric_value, scrape
from ocitest.registry import Registry, push_image

pytestmark = pytest.mark.integration

MiB = 1 << 20
ALL_MANIFESTS = ", ".join([MEDIA.OCI_MANIFEST, MEDIA.OCI_INDEX, MEDIA.DOCKER_MANIFEST, MEDIA.DOCKER_LIST])


def blob_path(cache_dir: str, digest: str) -> str:
    algorithm, hex_ = digest.split(":", 1)
    return os.path.join(cache_dir, "blobs", algorithm, hex_[:2], hex_)


def stored(daemon: Daemon, image: Image) -> bool:
    return all(os.path.exists(blob_path(daemon.cache_dir, blob.digest)) for blob in image.blobs)


def ocicache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocicache", *args], capture_output=True, text=True,
                          env=daemon_env(), timeout=300)


def new_image(upstream: Registry, name: str, size: int, tag: str = "v1") -> Image:
    """A fresh image of one layer of about C{size} bytes, pushed to the real registry."""
    image = oci_image(repo=f"ocitest-pins/{name}", tag=tag, seed=f"{name}-{uuid.uuid4()}", sizes=(size,))
    push_image(upstream.url, image)
    return image


def ref(image: Image) -> str:
    return f"docker.io/{image.repo}:{image.tag}"


def fill(daemon: Daemon, upstream: Registry, total: int, piece: int = MiB + MiB // 2) -> list[Image]:
    """Fetch C{total} bytes of new blobs by digest (no manifest), one after the other, all committed."""
    images = []
    for number in range(-(-total // piece)):
        image = new_image(upstream, f"fill{number}", piece)
        [layer] = image.layers
        status, _, body = http_request(f"{daemon.url}/v2/docker.io/{image.repo}/blobs/{layer.digest}")
        assert status == 200 and len(body) == layer.size
        path = blob_path(daemon.cache_dir, layer.digest)
        wait_for(lambda: os.path.exists(path), 10, what="the fill blob committed")  # noqa: B023
        images.append(image)
    return images


def pinning_daemon(daemon_factory: DaemonPool, max_size: str, **cache: object) -> tuple[Daemon, str]:
    metrics = free_port()
    daemon = daemon_factory(max_size=max_size, cache_extra={"protect_recent": "0s", **cache},
                            extra_tables={"metrics": {"listen": f"tcp:{metrics}:interface=127.0.0.1"}})
    return daemon, f"http://127.0.0.1:{metrics}"


def pins(daemon: Daemon) -> list[dict[str, object]]:
    listed = ocicache("pins", "--config", daemon.config_path, "--json")
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, object]] = json.loads(listed.stdout)["pins"]
    return result


def test_a_pinned_image_survives_a_fill_and_an_unpinned_one_does_not(
    daemon_factory: DaemonPool, upstream: Registry, hop: Hop
) -> None:
    daemon, operator = pinning_daemon(daemon_factory, "6MiB")
    kept = new_image(upstream, "kept", MiB)
    loose = new_image(upstream, "loose", MiB)
    pinned = ocicache("pin", "--config", daemon.config_path, ref(kept))
    assert pinned.returncode == 0, pinned.stderr
    assert f"pinned {ref(kept)} -> {kept.manifest_digest}: fetched 2 blobs" in pinned.stdout
    assert stored(daemon, kept)
    warmed = ocicache("warm", "--config", daemon.config_path, ref(loose))
    assert warmed.returncode == 0, warmed.stderr
    assert stored(daemon, loose)
    [listed] = pins(daemon)
    assert listed["digest"] == kept.manifest_digest and listed["reference"] == "v1"
    assert listed["bytes"] == sum(blob.size for blob in kept.blobs)
    wait_for(lambda: metric_value(scrape(f"{operator}/metrics"), "ocicache_pinned_bytes") == listed["bytes"], 10,
             what="the pinned bytes counted")

    fill(daemon, upstream, 6 * MiB)
    assert stored(daemon, kept), "eviction removed a pinned blob"
    assert not os.path.exists(blob_path(daemon.cache_dir, loose.layers[0].digest)), "the unpinned layer survived"
    assert metric_value(scrape(f"{operator}/metrics"), "ocicache_evictions_total") > 0

    # Released: no pin holds anything (eviction then treats it as any other blob).
    unpinned = ocicache("unpin", "--config", daemon.config_path, ref(kept))
    assert unpinned.returncode == 0, unpinned.stderr
    assert f"unpinned docker.io/{kept.repo}:v1" in unpinned.stdout
    assert pins(daemon) == []
    wait_for(lambda: metric_value(scrape(f"{operator}/metrics"), "ocicache_pinned_bytes") == 0, 10,
             what="the released bytes uncounted")
    again = ocicache("unpin", "--config", daemon.config_path, ref(kept))
    assert again.returncode == 1 and "is not pinned" in again.stderr


def test_a_pin_that_cannot_fit_is_refused_and_evicts_no_other_pin(
    daemon_factory: DaemonPool, upstream: Registry, hop: Hop
) -> None:
    daemon, _ = pinning_daemon(daemon_factory, "3MiB")
    first = new_image(upstream, "first", 2 * MiB)
    second = new_image(upstream, "second", 2 * MiB)
    assert ocicache("pin", "--config", daemon.config_path, ref(first)).returncode == 0
    hop.reset()
    refused = ocicache("pin", "--config", daemon.config_path, ref(second))
    assert refused.returncode == 1
    assert f"cannot pin docker.io/{second.repo}:v1" in refused.stderr, refused.stderr
    assert "over max_size (3145728 bytes)" in refused.stderr, refused.stderr
    assert [pin["digest"] for pin in pins(daemon)] == [first.manifest_digest]
    assert stored(daemon, first)
    hop.wait_idle()
    assert hop.count("GET", "/blobs/") == 0, "a refused pin fetched blobs"


def test_a_tag_pin_follows_the_tag(daemon_factory: DaemonPool, upstream: Registry, hop: Hop) -> None:
    daemon, _ = pinning_daemon(daemon_factory, "6MiB", janitor_interval="1s")
    daemon.stop()
    # A short tag_ttl, so that the pin's revalidation sees the move soon.
    with open(daemon.config_path) as f:
        text = f.read().replace('tag_ttl = "5m"', 'tag_ttl = "1s"')
    with open(daemon.config_path, "w") as f:
        f.write(text)
    daemon.start()
    old = new_image(upstream, "follow", MiB)
    assert ocicache("pin", "--config", daemon.config_path, ref(old)).returncode == 0
    new = oci_image(repo=old.repo, tag="v1", seed=f"follow-new-{uuid.uuid4()}", sizes=(MiB,))
    push_image(upstream.url, new)
    wait_for(lambda: [pin["digest"] for pin in pins(daemon)] == [new.manifest_digest], 30,
             what="the pin to follow its tag")
    wait_for(lambda: stored(daemon, new), 30, what="the new closure fetched")
    assert "follows its tag from " + old.manifest_digest in daemon.log_text()

    fill(daemon, upstream, 6 * MiB)
    assert stored(daemon, new), "the tag's new closure was not pinned"
    assert not os.path.exists(blob_path(daemon.cache_dir, old.layers[0].digest)), "the old closure stayed pinned"


@pytest.mark.parametrize("protect_recent", ["1h", "0s"])
def test_protect_recent_keeps_the_layers_of_an_image_being_pulled(
    protect_recent: str, daemon_factory: DaemonPool, upstream: Registry, hop: Hop
) -> None:
    daemon = daemon_factory(max_size="4MiB", cache_extra={"protect_recent": protect_recent})
    pulling = new_image(upstream, "pulling", MiB)
    # A pull in progress: the manifest, then its first layer; the rest not yet asked for.
    status, _, _ = http_request(f"{daemon.url}/v2/docker.io/{pulling.repo}/manifests/v1",
                                headers={"Accept": ALL_MANIFESTS})
    assert status == 200
    [layer] = pulling.layers
    status, _, _ = http_request(f"{daemon.url}/v2/docker.io/{pulling.repo}/blobs/{layer.digest}")
    assert status == 200
    wait_for(lambda: os.path.exists(blob_path(daemon.cache_dir, layer.digest)), 10, what="the layer committed")

    fill(daemon, upstream, 6 * MiB)
    kept = os.path.exists(blob_path(daemon.cache_dir, layer.digest))
    assert kept is (protect_recent == "1h")


def test_a_pinned_image_is_never_expired(daemon_factory: DaemonPool, upstream: Registry, hop: Hop) -> None:
    daemon, _ = pinning_daemon(daemon_factory, "6MiB", blob_ttl="1s", janitor_interval="1s")
    kept = new_image(upstream, "unexpired", 64 << 10)
    loose = new_image(upstream, "expired", 64 << 10)
    assert ocicache("pin", "--config", daemon.config_path, ref(kept)).returncode == 0
    assert ocicache("warm", "--config", daemon.config_path, ref(loose)).returncode == 0
    wait_for(lambda: not any(os.path.exists(blob_path(daemon.cache_dir, b.digest)) for b in loose.blobs), 30,
             what="the unpinned image expired")
    assert stored(daemon, kept), "blob_ttl expired a pinned blob"
