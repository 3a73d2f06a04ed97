"""
Pulls through the real daemon with real clients (skopeo, containerd's ctr)
and plain HTTP, against a real upstream (docker-registry) behind the
counting hop.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import pytest

from ocitest import http_request, wait_for
from ocitest.containerd import Containerd, write_hosts_dir
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image, oci_image
from ocitest.registry import Registry, push_image

pytestmark = pytest.mark.integration

MANIFEST_ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)

SMALL = ("oci", "list", "index", "team")


# --- helpers ---------------------------------------------------------------


def blob_path(cache_dir: str, digest: str) -> str:
    algorithm, hex_ = digest.split(":", 1)
    return os.path.join(cache_dir, "blobs", algorithm, hex_[:2], hex_)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def wait_for_blobs(cache_dir: str, digests: list[str], timeout: float = 30.0) -> None:
    """
    Wait until every digest is committed to the blob store (the daemon may
    commit a blob a little after its last byte went to the clients: it
    verifies and fsyncs first).
    """
    paths = [blob_path(cache_dir, d) for d in digests]
    try:
        wait_for(lambda: all(os.path.exists(p) for p in paths), timeout, what="blobs committed")
    except TimeoutError:
        missing = [p for p in paths if not os.path.exists(p)]
        raise AssertionError(f"not in the blob store after {timeout}s: {missing}") from None


def assert_blob_store_sound(cache_dir: str) -> list[str]:
    """
    Every file under blobs/sha256/ sits at the path its own SHA-256 names.
    """
    found = []
    root = os.path.join(cache_dir, "blobs", "sha256")
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if len(name) != 64 or os.path.basename(dirpath) != name[:2]:
                continue  # not a blob (the daemon may keep other files here)
            assert file_sha256(path) == "sha256:" + name, f"corrupt blob in the store: {path}"
            found.append("sha256:" + name)
    return found


def image_path(image: Image, addressing: str) -> str:
    """
    The name a client uses for C{image} through the daemon.
    """
    if addressing == "prefix":
        return f"docker.io/{image.repo}"
    if addressing == "default":
        return image.short_name
    raise ValueError(addressing)


def skopeo_copy(skopeo: str, daemon: Daemon, name: str, tag: str, dest: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        skopeo, "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
        f"docker://{daemon.host}/{name}:{tag}", f"dir:{dest}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({r.returncode})\n--- stderr ---\n{r.stderr[-4000:]}"
            f"\n--- ocicache log ---\n{daemon.log_tail(40)}"
        )
    return r


def assert_dir_copy(dest: str, image: Image) -> None:
    """
    skopeo's dir: output holds exactly the upstream's manifests and blobs.
    """
    with open(os.path.join(dest, "manifest.json"), "rb") as f:
        assert f.read() == image.manifest_bytes, "top manifest differs from upstream's bytes"
    for child in image.children:
        path = os.path.join(dest, child.manifest_digest.split(":")[1] + ".manifest.json")
        with open(path, "rb") as f:
            assert f.read() == child.manifest_bytes, f"child manifest {child.manifest_digest} differs"
    for blob in image.all_blobs():
        path = os.path.join(dest, blob.hex)
        assert os.path.getsize(path) == blob.size, f"blob {blob.digest} has the wrong size"
        assert file_sha256(path) == blob.digest, f"blob {blob.digest} has the wrong content"


def get_manifest(daemon: Daemon, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return http_request(daemon.url + target, method, headers={"Accept": MANIFEST_ACCEPT})


def assert_manifest_response(status: int, headers: dict[str, str], body: bytes, image: Image, method: str) -> None:
    assert status == 200, (status, body[:500])
    assert headers.get("docker-content-digest") == image.manifest_digest
    assert headers.get("content-type") == image.manifest_media_type
    assert headers.get("content-length") == str(len(image.manifest_bytes))
    if method == "GET":
        assert body == image.manifest_bytes


def error_code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


# --- skopeo ----------------------------------------------------------------


SKOPEO_CASES = [(name, addressing) for name in SMALL + ("big1",) for addressing in ("prefix", "default")] + [
    ("big64", "prefix"),
    ("big256", "prefix"),
]


@pytest.mark.parametrize("name,addressing", SKOPEO_CASES)
def test_skopeo_copy_all_cold_then_warm(
    name: str, addressing: str, skopeo: str, ocitest_images: dict[str, Image],
    daemon: Daemon, hop: Hop, tmp_path: Path,
) -> None:
    image = ocitest_images[name]
    client_name = image_path(image, addressing)

    cold = str(tmp_path / "cold")
    skopeo_copy(skopeo, daemon, client_name, image.reference, cold)
    assert_dir_copy(cold, image)
    hop.wait_idle()
    assert hop.count() > 0, "a cold pull must go upstream"
    for req in hop.requests:
        assert req.path.startswith(f"/v2/{image.repo}/"), f"routed to the wrong upstream repo: {req}"
    for blob in image.all_blobs():
        assert hop.count("GET", blob.digest) == 1, (
            f"blob {blob.digest} fetched upstream more than once:\n{hop.summary()}"
        )
    wait_for_blobs(daemon.cache_dir, [blob.digest for blob in image.all_blobs()])
    assert_blob_store_sound(daemon.cache_dir)
    shutil.rmtree(cold)

    hop.reset()
    warm = str(tmp_path / "warm")
    skopeo_copy(skopeo, daemon, client_name, image.reference, warm)
    assert_dir_copy(warm, image)
    hop.wait_idle()
    assert hop.count() == 0, f"a warm pull inside the tag TTL went upstream:\n{hop.summary()}"
    shutil.rmtree(warm)


# --- containerd ------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL + ("big64",))
def test_ctr_pull_cold_then_warm(
    name: str, ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop,
    containerd_factory: Callable[[], Containerd], tmp_path: Path,
) -> None:
    """
    containerd sends /v2/<repo>/...?ns=docker.io to a mirror; a fresh
    containerd per pull (1.6 keeps content shared across namespaces and
    until GC, so a second pull in the same instance would not fetch).
    """
    image = ocitest_images[name]
    ref = f"docker.io/{image.repo}:{image.tag}"
    hosts = write_hosts_dir(str(tmp_path / "hosts"), "docker.io", daemon.url)
    platform_image = image.for_platform("amd64")

    for attempt in ("cold", "warm"):
        hop.reset()
        ctrd = containerd_factory()
        try:
            ctrd.pull(ref, hosts_dir=hosts)
        except Exception as e:
            raise AssertionError(f"{attempt} pull failed: {e}\n--- ocicache log ---\n{daemon.log_tail(40)}") from e
        assert ctrd.image_digest(ref) == image.manifest_digest
        assert ctrd.image_media_type(ref) == image.manifest_media_type
        assert "complete" in ctrd.check(ref)
        assert ctrd.content_get(image.manifest_digest) == image.manifest_bytes
        assert ctrd.content_get(platform_image.manifest_digest) == platform_image.manifest_bytes
        content = ctrd.content_digests()
        for blob in platform_image.blobs:
            assert blob.digest in content, f"{blob.digest} missing from containerd's content store"
            if blob.size <= 4 << 20:
                assert ctrd.content_get(blob.digest) == blob.data
        ctrd.stop()
        hop.wait_idle()
        if attempt == "cold":
            assert hop.count() > 0
            for req in hop.requests:
                assert req.path.startswith(f"/v2/{image.repo}/"), f"wrong upstream repo: {req}"
            for blob in platform_image.blobs:
                assert hop.count("GET", blob.digest) == 1, hop.summary()
        else:
            assert hop.count() == 0, f"a warm pull inside the tag TTL went upstream:\n{hop.summary()}"


# --- manifests and tags ----------------------------------------------------


def _targets(image: Image) -> list[str]:
    """
    The same manifest by tag through each addressing form.
    """
    return [
        f"/v2/docker.io/{image.repo}/manifests/{image.tag}",
        f"/v2/{image.repo}/manifests/{image.tag}?ns=docker.io",
        f"/v2/{image.short_name}/manifests/{image.tag}",
    ]


@pytest.mark.parametrize("name", SMALL)
def test_manifest_headers_and_bytes(name: str, ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images[name]
    for target in _targets(image):
        for method in ("HEAD", "GET"):
            status, headers, body = get_manifest(daemon, target, method)
            assert_manifest_response(status, headers, body, image, method)
    for child in image.children:
        target = f"/v2/docker.io/{image.repo}/manifests/{child.manifest_digest}"
        for method in ("HEAD", "GET"):
            status, headers, body = get_manifest(daemon, target, method)
            assert_manifest_response(status, headers, body, child, method)


def test_other_upstream_by_prefix_and_ns(ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    """
    ghcr.io (also at the hop) is reached by prefix and by ns, and gets no
    library/ added.
    """
    image = ocitest_images["team"]
    for target in (f"/v2/ghcr.io/{image.repo}/manifests/v1", f"/v2/{image.repo}/manifests/v1?ns=ghcr.io"):
        status, headers, body = get_manifest(daemon, target)
        assert_manifest_response(status, headers, body, image, "GET")
    assert all(r.path.startswith(f"/v2/{image.repo}/") for r in hop.requests), hop.summary()


@pytest.mark.parametrize("name", SMALL)
def test_warm_tag_inside_ttl_makes_no_upstream_request(
    name: str, ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop
) -> None:
    image = ocitest_images[name]
    first = _targets(image)[0]
    status, headers, body = get_manifest(daemon, first)
    assert_manifest_response(status, headers, body, image, "GET")
    hop.wait_idle()
    assert hop.count() >= 1
    hop.reset()
    for target in _targets(image):
        for method in ("HEAD", "GET"):
            status, headers, body = get_manifest(daemon, target, method)
            assert_manifest_response(status, headers, body, image, method)
    by_digest = f"/v2/docker.io/{image.repo}/manifests/{image.manifest_digest}"
    status, headers, body = get_manifest(daemon, by_digest)
    assert_manifest_response(status, headers, body, image, "GET")
    hop.wait_idle()
    assert hop.count() == 0, f"warm tag went upstream:\n{hop.summary()}"


def test_upstream_tag_ttl_overrides_cache_tag_ttl(
    ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop
) -> None:
    daemon = daemon_factory(tag_ttl="1s", upstreams=[Upstream("docker.io", hop.url, default=True, tag_ttl="10m")])
    image = ocitest_images["oci"]
    target = _targets(image)[0]
    assert get_manifest(daemon, target)[0] == 200
    hop.wait_idle()
    hop.reset()
    time.sleep(1.5)
    status, headers, body = get_manifest(daemon, target)
    assert_manifest_response(status, headers, body, image, "GET")
    hop.wait_idle()
    assert hop.count() == 0, f"upstream tag_ttl = 10m was not honoured:\n{hop.summary()}"


def test_tag_moves_upstream_after_ttl(
    ocitest_images: dict[str, Image], upstream: Registry, daemon_factory: Callable[..., Daemon], hop: Hop
) -> None:
    daemon = daemon_factory(tag_ttl="1s")
    tag = f"t{os.getpid()}-{time.monotonic_ns()}"
    old = oci_image(repo="library/ocitest-retag", tag=tag, seed=f"retag-old-{tag}", sizes=(1000,))
    new = oci_image(repo="library/ocitest-retag", tag=tag, seed=f"retag-new-{tag}", sizes=(2000,))
    push_image(upstream.url, old)
    target = f"/v2/docker.io/library/ocitest-retag/manifests/{tag}"
    status, headers, body = get_manifest(daemon, target)
    assert_manifest_response(status, headers, body, old, "GET")

    push_image(upstream.url, new)
    # Inside the TTL the old digest may still be served; after it, the new one.
    time.sleep(1.5)
    status, headers, body = get_manifest(daemon, target)
    assert_manifest_response(status, headers, body, new, "GET")
    hop.wait_idle()
    assert hop.count(path_contains=f"/manifests/{tag}") >= 1


@pytest.mark.parametrize("outage", ["503", "refused"])
def test_stale_if_error(
    outage: str, ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop
) -> None:
    """
    With the upstream failing, a tag whose TTL has run out is served stale;
    content by digest is served from the cache; something never cached is
    a 5xx error document (not a 404, not a dropped connection).
    """
    daemon = daemon_factory(tag_ttl="1s")
    image = ocitest_images["index"]
    target = _targets(image)[0]
    status, headers, body = get_manifest(daemon, target)
    assert_manifest_response(status, headers, body, image, "GET")
    child = image.children[0]
    child_target = f"/v2/docker.io/{image.repo}/manifests/{child.manifest_digest}"
    status, headers, body = get_manifest(daemon, child_target)
    assert_manifest_response(status, headers, body, child, "GET")
    hop.wait_idle()

    if outage == "503":
        hop.down = True
    else:
        hop.stop()
    time.sleep(1.5)
    for method in ("GET", "HEAD"):
        status, headers, body = get_manifest(daemon, target, method)
        assert_manifest_response(status, headers, body, image, method)
        status, headers, body = get_manifest(daemon, child_target, method)
        assert_manifest_response(status, headers, body, child, method)
    if outage == "503":
        assert hop.count(status=503) >= 1, "the stale tag was not revalidated upstream"

    never_fetched = ocitest_images["team"]
    status, headers, body = get_manifest(daemon, f"/v2/docker.io/{never_fetched.repo}/manifests/v1")
    assert 500 <= status < 600, f"uncached manifest with the upstream down: HTTP {status} {body[:300]!r}"
    assert json.loads(body)["errors"][0]["code"], body


def test_unknown_things_are_404(ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["oci"]
    status, _, body = get_manifest(daemon, f"/v2/docker.io/{image.repo}/manifests/no-such-tag")
    assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN", body
    missing = "sha256:" + "0" * 64
    status, _, body = http_request(daemon.url + f"/v2/docker.io/{image.repo}/blobs/{missing}")
    assert status == 404 and error_code(body) == "BLOB_UNKNOWN", body
    status, _, body = get_manifest(daemon, "/v2/docker.io/library/ocitest-no-such-repo/manifests/v1")
    assert status == 404 and error_code(body) in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"), body


# --- blobs -------------------------------------------------------------------


def _blob_target(image: Image, digest: str) -> str:
    return f"/v2/docker.io/{image.repo}/blobs/{digest}"


def test_blob_get_and_head(ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["oci"]
    for blob in image.blobs:
        for attempt in ("cold", "warm"):
            for method in ("GET", "HEAD"):
                status, headers, body = http_request(daemon.url + _blob_target(image, blob.digest), method)
                assert status == 200, (attempt, method, status, body[:300])
                assert headers.get("docker-content-digest") == blob.digest
                assert headers.get("content-length") == str(blob.size)
                assert headers.get("accept-ranges") == "bytes"
                if method == "GET":
                    assert body == blob.data
    hop.wait_idle()
    for blob in image.blobs:
        assert hop.count("GET", blob.digest) == 1, hop.summary()


def _ranges(size: int) -> list[tuple[str, int, int]]:
    """
    (Range header, first byte, last byte) cases for a blob of C{size} bytes.
    """
    return [
        (f"bytes={size // 3}-", size // 3, size - 1),
        (f"bytes=1000-{size // 2}", 1000, size // 2),
        ("bytes=0-0", 0, 0),
        (f"bytes={size - 1}-", size - 1, size - 1),
        (f"bytes=10-{size + 1000}", 10, size - 1),
    ]


@pytest.mark.parametrize("state", ["warm", "cold"])
@pytest.mark.parametrize("name", ["oci", "big1"])
@pytest.mark.parametrize("case", range(5))
def test_range_requests(
    state: str, name: str, case: int, ocitest_images: dict[str, Image],
    daemon_factory: Callable[..., Daemon], hop: Hop,
) -> None:
    daemon = daemon_factory()
    image = ocitest_images[name]
    blob = max(image.layers, key=lambda b: b.size)
    target = daemon.url + _blob_target(image, blob.digest)
    if state == "warm":
        status, headers, body = http_request(target)
        assert status == 200 and body == blob.data
        assert headers.get("accept-ranges") == "bytes"
    header, first, last = _ranges(blob.size)[case]
    status, headers, body = http_request(target, headers={"Range": header})
    assert status == 206, (header, status, body[:300])
    assert headers.get("content-range") == f"bytes {first}-{last}/{blob.size}", headers
    assert headers.get("content-length") == str(last - first + 1)
    assert body == blob.read_range(first, last + 1)
    # The whole blob is still right afterwards (a cold range must not have
    # cached a partial blob).
    status, _, body = http_request(target)
    assert status == 200 and hashlib.sha256(body).hexdigest() == blob.hex
    hop.wait_idle()
    assert_blob_store_sound(daemon.cache_dir)


# --- one big blob, many clients -----------------------------------------------


class _ClientResult(TypedDict, total=False):
    """What one client of the test below saw; C{error} instead of the rest if it failed."""

    start: float
    status: int
    content_length: str | None
    first_byte: float
    hop_sent_at_first_byte: int
    end: float
    bytes: int
    digest: str
    error: str


def test_16_concurrent_cold_gets_of_a_256mib_blob(
    ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop
) -> None:
    """
    Singleflight and streaming: one upstream GET for 16 clients, every
    client gets the right bytes, and bytes reach clients while the upstream
    download is still in progress.
    """
    image = ocitest_images["big256"]
    blob = image.layers[0]
    target = _blob_target(image, blob.digest)
    # An upstream slower than loopback, so "still downloading" is observable.
    hop.throttle = 160 << 20
    clients = 16
    barrier = threading.Barrier(clients)
    results: list[_ClientResult] = [{} for _ in range(clients)]

    def client(i: int) -> None:
        result = results[i]
        try:
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=300)
            conn.connect()
            barrier.wait(30)
            result["start"] = time.monotonic()
            conn.request("GET", target)
            response = conn.getresponse()
            result["status"] = response.status
            result["content_length"] = response.getheader("Content-Length")
            h = hashlib.sha256()
            n = 0
            while True:
                piece = response.read1(1 << 20)
                if not piece:
                    break
                if n == 0:
                    result["first_byte"] = time.monotonic()
                    result["hop_sent_at_first_byte"] = hop.bytes_sent_for(blob.digest)
                h.update(piece)
                n += len(piece)
            result["end"] = time.monotonic()
            result["bytes"] = n
            result["digest"] = "sha256:" + h.hexdigest()
            conn.close()
        except Exception as e:  # reported below
            result["error"] = repr(e)

    threads = [threading.Thread(target=client, args=(i,), name=f"client{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    hop.wait_idle(30)

    for i, r in enumerate(results):
        assert "error" not in r, f"client {i}: {r.get('error')}"
        assert r["status"] == 200, f"client {i}: HTTP {r['status']}"
        assert r["bytes"] == blob.size, f"client {i}: {r['bytes']} of {blob.size} bytes"
        assert r["digest"] == blob.digest, f"client {i}: wrong content"
    upstream_gets = hop.matching("GET", blob.digest)
    assert len(upstream_gets) == 1, f"expected one upstream GET for the blob:\n{hop.summary()}"
    upstream_get = upstream_gets[0]
    assert upstream_get.status == 200 and upstream_get.bytes_sent == blob.size

    earliest = min(results, key=lambda r: r["first_byte"])
    last_end = max(r["end"] for r in results)
    assert earliest["hop_sent_at_first_byte"] < blob.size // 2, (
        f"first client byte only after {earliest['hop_sent_at_first_byte']} of {blob.size} bytes came "
        "from upstream: the daemon does not stream while downloading"
    )
    assert upstream_get.finished is not None
    assert earliest["first_byte"] < upstream_get.finished
    assert earliest["first_byte"] < last_end
    wait_for_blobs(daemon.cache_dir, [blob.digest], timeout=60)
    stored = blob_path(daemon.cache_dir, blob.digest)
    assert os.path.getsize(stored) == blob.size
    assert file_sha256(stored) == blob.digest


# --- upstream failures -------------------------------------------------------


def test_upstream_cut_mid_stream_is_not_cached(
    ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop
) -> None:
    image = ocitest_images["big64"]
    blob = image.layers[0]
    hop.fail_mid_stream(after_bytes=5 << 20, path_contains=blob.digest, times=1)
    target = _blob_target(image, blob.digest)

    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
    got = 0
    h = hashlib.sha256()
    status = None
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        status = response.status
        while True:
            piece = response.read1(1 << 20)
            if not piece:
                break
            got += len(piece)
            h.update(piece)
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
    if status == 200 and got == blob.size:
        # A daemon that resumed the upstream download must still be right.
        assert "sha256:" + h.hexdigest() == blob.digest
    else:
        # Either an error status before any body, or a body cut short: the
        # client must be able to tell the transfer failed.
        assert status is None or status == 200 or status >= 500, status
    hop.wait_idle(30)

    status, headers, body = http_request(daemon.url + target, timeout=120)
    assert status == 200
    assert len(body) == blob.size and hashlib.sha256(body).hexdigest() == blob.hex
    del body
    assert_blob_store_sound(daemon.cache_dir)
