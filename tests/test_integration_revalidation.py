"""
Revalidating tags through the real daemon, against distribution through
the counting hop: one upstream HEAD however many clients ask for an
expired tag at once, and each upstream's stale policy (which failures
serve stale, for how long, and what a 404 does), with C{Warning: 110} on
every stale answer and on no fresh one.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from ocitest import free_port, http_request
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image, oci_image
from ocitest.registry import Registry, push_image

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)
STALE = '110 - "Response is Stale"'
TTL = 1.0
CLIENTS = 200


def _manifest(daemon: Daemon, image: Image, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return http_request(daemon.url + f"/v2/docker.io/{image.repo}/manifests/{image.reference}", method,
                        headers={"Accept": ACCEPT})


def _tags(daemon: Daemon, image: Image) -> tuple[int, dict[str, str], bytes]:
    return http_request(daemon.url + f"/v2/docker.io/{image.repo}/tags/list")


def _code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


def _policy_daemon(daemon_factory: Callable[..., Daemon], hop: Hop, **policy: object) -> Daemon:
    return daemon_factory(tag_ttl=f"{TTL:g}s",
                          upstreams=[Upstream("docker.io", hop.url, default=True, extra=dict(policy))])


def _warm_then_expire(daemon: Daemon, image: Image, hop: Hop) -> None:
    """Cache the tag (a fresh answer has no Warning), then let its TTL pass."""
    status, headers, body = _manifest(daemon, image)
    assert status == 200 and body == image.manifest_bytes
    assert "warning" not in headers
    hop.wait_idle()
    time.sleep(TTL * 1.3)


def _assert_stale(answer: tuple[int, dict[str, str], bytes], image: Image) -> None:
    status, headers, body = answer
    assert status == 200, (status, body[:300])
    assert headers.get("docker-content-digest") == image.manifest_digest
    assert headers.get("warning") == STALE


# -- one upstream request per tag


@pytest.mark.parametrize("methods", ["HEAD", "GET", "mix"])
def test_concurrent_requests_for_an_expired_tag_cost_one_upstream_head(
        methods: str, ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = daemon_factory(tag_ttl=f"{TTL:g}s")
    _warm_then_expire(daemon, image, hop)
    hop.reset()
    # The HEAD takes long enough for every client to arrive while it is
    # in flight.
    hop.delay = 1.0
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> tuple[str, int, str | None, bytes]:
        method = methods if methods != "mix" else ("HEAD", "GET")[index % 2]
        barrier.wait(30)
        status, headers, body = _manifest(daemon, image, method)
        return method, status, headers.get("docker-content-digest"), body

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(client, range(CLIENTS)))
    assert {(status, digest) for _, status, digest, _ in answers} == {(200, image.manifest_digest)}
    assert {body for method, _, _, body in answers if method == "GET"} <= {image.manifest_bytes}
    hop.wait_idle()
    assert hop.count("HEAD", "/manifests/") == 1, hop.summary()
    assert hop.count("GET", "/manifests/") == 0, hop.summary()
    # Revalidated: fresh again, for every client, with no upstream request.
    status, headers, _ = _manifest(daemon, image, "HEAD")
    assert status == 200 and "warning" not in headers
    assert hop.count() == 1, hop.summary()


# -- which failures serve stale


def _break(hop: Hop, failure: str) -> None:
    if failure == "connect":
        hop.stop()
    else:
        hop.down = True
        hop.down_status = int(failure.replace("5xx", "503"))


@pytest.mark.parametrize("failure", ["connect", "5xx", "429"])
def test_by_default_an_unavailable_upstream_serves_stale_with_a_warning(
        failure: str, ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = daemon_factory(tag_ttl=f"{TTL:g}s")
    _warm_then_expire(daemon, image, hop)
    _break(hop, failure)
    for method in ("GET", "HEAD"):
        answer = _manifest(daemon, image, method)
        _assert_stale(answer, image)
        if method == "GET":
            assert answer[2] == image.manifest_bytes
    if failure != "connect":
        assert hop.count("HEAD", f"/manifests/{image.reference}", status=int(failure.replace("5xx", "503"))) >= 1
    hop.reset()
    if failure == "429":
        # A 429 is obeyed (docs/upstreams.md, "Docker Hub quota"): the upstream is left
        # alone for its window, and the cached tag stays stale meanwhile.
        _assert_stale(_manifest(daemon, image), image)
        assert hop.count() == 0, hop.summary()
        return
    # The upstream is back: revalidated, fresh, no warning.
    status, headers, _ = _manifest(daemon, image)
    assert status == 200 and "warning" not in headers
    assert hop.count("HEAD", f"/manifests/{image.reference}", status=200) == 1, hop.summary()


def test_an_upstream_slower_than_response_timeout_serves_stale(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    """
    The "timeout" class end to end: with C{response_timeout = "1s"}, a
    revalidation the upstream holds for 3 s fails as a timeout and the
    tag is served stale (without the timeout it would wait, and answer
    fresh).
    """
    image = ocitest_images["oci"]
    daemon = daemon_factory(tag_ttl=f"{TTL:g}s", upstreams=[
        Upstream("docker.io", hop.url, default=True, extra={"response_timeout": "1s"})])
    _warm_then_expire(daemon, image, hop)
    hop.delay = 3.0
    answer = _manifest(daemon, image)
    _assert_stale(answer, image)
    assert answer[2] == image.manifest_bytes
    assert "docker.io: no answer within 1s (response_timeout)" in daemon.log_text()


@pytest.mark.parametrize(("failure", "code"), [("401", "UNAUTHORIZED"), ("403", "DENIED")])
def test_refused_credentials_are_not_served_stale_unless_asked(
        failure: str, code: str, ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon],
        hop: Hop) -> None:
    image = ocitest_images["oci"]
    strict = daemon_factory(tag_ttl=f"{TTL:g}s")
    lenient = _policy_daemon(daemon_factory, hop, stale_on=[failure])
    for daemon in (strict, lenient):
        _warm_then_expire(daemon, image, hop)
    _break(hop, failure)
    status, headers, body = _manifest(strict, image)
    assert status == int(failure) and _code(body) == code, body
    assert "warning" not in headers
    _assert_stale(_manifest(lenient, image), image)


def test_a_failure_not_listed_in_stale_on_is_passed_on(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = _policy_daemon(daemon_factory, hop, stale_on=["connect"])
    _warm_then_expire(daemon, image, hop)
    hop.down = True
    status, headers, body = _manifest(daemon, image)
    assert status == 502 and _code(body) == "UPSTREAM_UNAVAILABLE", body
    assert "warning" not in headers
    hop.stop()
    _assert_stale(_manifest(daemon, image), image)


def test_max_stale_is_honoured(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = _policy_daemon(daemon_factory, hop, max_stale="3s")
    _warm_then_expire(daemon, image, hop)
    hop.down = True
    _assert_stale(_manifest(daemon, image), image)
    # Past max_stale (counted from the last revalidation): no longer.
    time.sleep(3.0)
    status, headers, body = _manifest(daemon, image)
    assert status == 502 and _code(body) == "UPSTREAM_UNAVAILABLE", body
    assert "warning" not in headers


# -- tag lists


def test_a_stale_tag_list_carries_the_warning_and_honours_max_stale(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = _policy_daemon(daemon_factory, hop, max_stale="3s")
    status, headers, fresh = _tags(daemon, image)
    assert status == 200 and image.tag in json.loads(fresh)["tags"]
    assert "warning" not in headers
    time.sleep(TTL * 1.3)
    hop.down = True
    status, headers, body = _tags(daemon, image)
    assert (status, body, headers.get("warning")) == (200, fresh, STALE)
    time.sleep(3.0)
    status, headers, body = _tags(daemon, image)
    assert status == 502 and _code(body) == "UPSTREAM_UNAVAILABLE", body
    assert "warning" not in headers


def test_refused_credentials_do_not_serve_a_stale_tag_list_by_default(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = daemon_factory(tag_ttl=f"{TTL:g}s")
    assert _tags(daemon, image)[0] == 200
    time.sleep(TTL * 1.3)
    hop.down = True
    hop.down_status = 403
    status, _, body = _tags(daemon, image)
    assert status == 403 and _code(body) == "DENIED", body


def _stale_count(metrics_url: str, kind: str) -> float:
    _, _, body = http_request(metrics_url)
    series = f'ocicache_cache_requests_total{{kind="{kind}",result="stale"}} '
    lines = [line for line in body.decode().splitlines() if line.startswith(series)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_stale_answers_are_counted(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    port = free_port()
    daemon = daemon_factory(tag_ttl=f"{TTL:g}s",
                            extra_tables={"metrics": {"listen": f"tcp:{port}:interface=127.0.0.1"}})
    metrics = f"http://127.0.0.1:{port}/metrics"
    assert _tags(daemon, image)[0] == 200
    _warm_then_expire(daemon, image, hop)
    assert (_stale_count(metrics, "manifest"), _stale_count(metrics, "tags")) == (0, 0)
    hop.down = True
    for method in ("GET", "HEAD", "GET"):
        _assert_stale(_manifest(daemon, image, method), image)
    assert _tags(daemon, image)[1].get("warning") == STALE
    assert (_stale_count(metrics, "manifest"), _stale_count(metrics, "tags")) == (3, 1)


# -- a tag the upstream no longer has


def _delete_manifest(registry: Registry, repo: str, digest: str) -> None:
    # distribution deletes a manifest by digest (storage delete is enabled
    # in ocitest.registry), and with it every tag that points at it.
    parts = urllib.parse.urlsplit(registry.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request("DELETE", f"/v2/{repo}/manifests/{digest}")
        response = conn.getresponse()
        response.read()
        assert response.status == 202, response.status
    finally:
        conn.close()
    status, _, _ = http_request(registry.url + f"/v2/{repo}/manifests/{digest}", "HEAD")
    assert status == 404


def _doomed(upstream: Registry, name: str) -> Image:
    tag = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
    image = oci_image(repo=f"library/ocitest-{name}", tag=tag, seed=f"doomed-{tag}", sizes=(1000,))
    push_image(upstream.url, image)
    return image


@pytest.mark.parametrize("on_404", ["keep", "forget"])
def test_a_tag_deleted_upstream_is_kept_or_forgotten(
        on_404: str, upstream: Registry, daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = _doomed(upstream, f"on404-{on_404}")
    daemon = _policy_daemon(daemon_factory, hop, on_404=on_404) if on_404 == "forget" else \
        daemon_factory(tag_ttl=f"{TTL:g}s")
    _warm_then_expire(daemon, image, hop)
    _delete_manifest(upstream, image.repo, image.manifest_digest)
    hop.reset()
    for _ in range(3):
        status, headers, body = _manifest(daemon, image)
        if on_404 == "keep":
            _assert_stale((status, headers, body), image)
            assert body == image.manifest_bytes
        else:
            assert status == 404 and _code(body) == "MANIFEST_UNKNOWN", body
            assert "warning" not in headers
    # One upstream 404, remembered (negative_ttl): the others cost nothing.
    hop.wait_idle()
    assert hop.count("HEAD", f"/manifests/{image.reference}", status=404) == 1, hop.summary()
    assert hop.count() == 1, hop.summary()
    # The content itself stays reachable by digest either way.
    status, _, body = http_request(daemon.url + f"/v2/docker.io/{image.repo}/manifests/{image.manifest_digest}",
                                   headers={"Accept": ACCEPT})
    assert status == 200 and body == image.manifest_bytes
