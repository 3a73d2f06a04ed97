"""
The headers the distribution-spec's main branch requires, asked for with
curl against the real daemon:

  - C{Docker-Content-Digest} and C{Content-Length} on every manifest and
    blob C{GET} and C{HEAD}: by tag and by digest, missed, hit, joined to
    a download in flight, as a C{206} range, and from an upstream that
    streams a blob without announcing its length;
  - C{OCI-Namespace} echoing C{?ns=} on every endpoint;
  - C{Retry-After} on every C{429}, whether or not its cause named a time.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from ocitest import require_binary, wait_for
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import Image, sha256_digest
from ocitest.lengthless import LengthlessUpstream

pytestmark = pytest.mark.integration

_Answer = tuple[int, dict[str, str], bytes]


def _parse(out: bytes) -> _Answer:
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _curl_command(url: str, *args: str) -> list[str]:
    return [require_binary("curl"), "--silent", "--show-error", "--max-time", "30", "--include", *args, url]


def _curl(url: str, *args: str) -> _Answer:
    return _parse(subprocess.run(_curl_command(url, *args), capture_output=True, check=True).stdout)


def _head(url: str, *args: str) -> _Answer:
    return _curl(url, "--head", *args)


def _assert_described(answer: _Answer, digest: str, length: int) -> None:
    status, headers, _ = answer
    assert status in (200, 206), answer
    assert headers.get("docker-content-digest") == digest, headers
    assert headers.get("content-length") == str(length), headers


def test_every_manifest_answer_names_its_digest_and_length(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["oci"]
    accept = ("--header", f"Accept: {image.manifest_media_type}")
    base = daemon.url + f"/v2/docker.io/{image.repo}/manifests/"
    length = len(image.manifest_bytes)
    # HEAD by tag first: a miss, with nothing cached.
    for reference in (image.tag, image.manifest_digest):
        assert reference is not None
        for ask in (_head, _curl, _head):  # miss or hit, then hit
            answer = ask(base + reference, *accept)
            _assert_described(answer, image.manifest_digest, length)
    status, _, body = _curl(base + image.manifest_digest, *accept)
    assert status == 200 and body == image.manifest_bytes
    assert hop.count("GET", "/manifests/") == 1, hop.summary()


def test_every_blob_answer_names_its_digest_and_length(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["big1"]
    layer = image.layers[0]
    url = daemon.url + f"/v2/docker.io/{image.repo}/blobs/{layer.digest}"
    # HEAD before anything is cached: from an upstream HEAD.
    _assert_described(_head(url), layer.digest, layer.size)
    # A slow miss, joined by a whole GET and a range while it downloads.
    hop.throttle = 512 << 10
    first = subprocess.Popen(_curl_command(url), stdout=subprocess.PIPE)
    wait_for(lambda: any("/blobs/" in r.path and r.method == "GET" for r in hop.in_flight()), 10,
             what="the blob download to start")
    joined = subprocess.Popen(_curl_command(url), stdout=subprocess.PIPE)
    ranged = subprocess.Popen(_curl_command(url, "--range", "100-199"), stdout=subprocess.PIPE)
    answers = [_parse(process.communicate(timeout=30)[0]) for process in (first, joined, ranged)]
    hop.throttle = None
    _assert_described(answers[0], layer.digest, layer.size)
    _assert_described(answers[1], layer.digest, layer.size)
    _assert_described(answers[2], layer.digest, 100)
    assert answers[0][2] == answers[1][2] == layer.data
    assert answers[2][0] == 206 and answers[2][2] == layer.read_range(100, 200)
    assert hop.count("GET", f"/blobs/{layer.digest}") == 1, hop.summary()
    # Stored: hits, whole, ranged and HEAD.
    _assert_described(_curl(url), layer.digest, layer.size)
    _assert_described(_curl(url, "--range", "-10"), layer.digest, 10)
    _assert_described(_curl(url, "--range", "1000-"), layer.digest, layer.size - 1000)
    _assert_described(_head(url), layer.digest, layer.size)
    assert hop.count("GET", f"/blobs/{layer.digest}") == 1, hop.summary()


def test_a_blob_streamed_without_a_length_is_still_answered_with_one(
        daemon_factory: Callable[..., Daemon]) -> None:
    data = bytes(range(256)) * 300
    digest = sha256_digest(data)
    upstream = LengthlessUpstream().start()
    try:
        upstream.blobs[digest] = data
        daemon = daemon_factory(upstreams=[Upstream("docker.io", upstream.url, default=True)])
        url = daemon.url + f"/v2/library/app/blobs/{digest}"
        answer = _curl(url)
        _assert_described(answer, digest, len(data))
        assert answer[2] == data
        assert upstream.count("GET", "/blobs/") == 1
        _assert_described(_curl(url), digest, len(data))  # then a hit
        assert upstream.count("GET", "/blobs/") == 1
    finally:
        upstream.stop()


def test_every_ns_request_is_answered_with_its_namespace(
        ocitest_images: dict[str, Image], daemon: Daemon) -> None:
    image = ocitest_images["oci"]
    layer = image.layers[0]
    repo = image.repo.removeprefix("library/")
    for path, status in (
        "/v2/", 200),(
        f"/v2/{repo}/manifests/{image.tag}", 200), (
        f"/v2/{repo}/manifests/{image.manifest_digest}", 200), (
        f"/v2/{repo}/blobs/{layer.digest}", 200), (
        f"/v2/{repo}/tags/list", 200), (
        f"/v2/{repo}/referrers/{image.manifest_digest}", 200), (
        f"/v2/{repo}/manifests/no-such-tag", 404), (
        f"/v2/{repo}/blobs/{sha256_digest(b'nothing')}", 404), (
        f"/v2/{repo}/tags/list?n=0", 400
    ):
        separator = "&" if "?" in path else "?"
        for ask in (_curl, _head):
            got, headers, _ = ask(daemon.url + path + separator + "ns=docker.io")
            assert got == status, path
            assert headers.get("oci-namespace") == "docker.io", (path, headers)
            got, headers, _ = ask(daemon.url + path)
            assert got == status, path
            assert "oci-namespace" not in headers, (path, headers)
    # An ns that names no upstream is not honoured, so not echoed.
    got, headers, _ = _curl(daemon.url + f"/v2/{repo}/manifests/{image.tag}?ns=quay.io")
    assert got == 404 and "oci-namespace" not in headers


def test_every_429_says_when_to_come_back(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["team"]
    daemon = daemon_factory(cache_extra={"max_downloads": 1, "download_queue": 0})
    # The upstream's 429 carries no Retry-After (the hop sends none).
    hop.down = True
    hop.down_status = 429
    for ask in (_curl, _head):
        status, headers, _ = ask(daemon.url + f"/v2/{image.repo}/manifests/{image.tag}")
        assert status == 429
        assert headers["retry-after"].isdigit() and int(headers["retry-after"]) > 0, headers
    hop.down = False
    # ocicache's own 429: its download queue is full.  (A fresh daemon: the
    # first leaves the upstream alone for a while after its 429s.)
    daemon = daemon_factory(cache_extra={"max_downloads": 1, "download_queue": 0})
    hop.throttle = 256 << 10
    big = ocitest_images["big1"]
    slow = subprocess.Popen(_curl_command(daemon.url + f"/v2/{big.repo}/blobs/{big.layers[0].digest}"),
                            stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: any("/blobs/" in r.path for r in hop.in_flight()), 10, what="a download in flight")
        status, headers, body = _curl(daemon.url + f"/v2/{image.repo}/blobs/{image.layers[0].digest}")
        assert status == 429 and b"TOOMANYREQUESTS" in body
        assert headers["retry-after"].isdigit() and int(headers["retry-after"]) > 0, headers
    finally:
        slow.kill()
        slow.wait(10)
        hop.throttle = None
