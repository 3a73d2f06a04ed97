"""
The HTTP details of issue 19 (items 4 and 9), against the real daemon over
real sockets:

  - every 401 carries C{WWW-Authenticate} (RFC 9110 §15.5.2), the
    upstream's refusal too;
  - C{Host} as RFC 9112 §3.2 requires: none (HTTP/1.1), two, or a
    malformed one get a 400;
  - every 400 carries a distribution-spec error body, a malformed request
    line (raw non-ASCII bytes) too;
  - C{If-None-Match} and C{If-Modified-Since} on blobs and manifests: a
    304 with the ETag, for GET and HEAD (RFC 9110 §13.1.2, §13.1.3, §13.2.2);
  - no Python or Twisted repr in an error message.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
from twisted.web.http import datetimeToString

from ocitest import http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Image

pytestmark = pytest.mark.integration

_Answer = tuple[int, dict[str, str], bytes]


def _raw(daemon: Daemon, data: bytes) -> _Answer:
    """Send C{data} as is; the one response, read until the server closes or it is complete."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                headers = _headers(head)
                if len(body) >= int(headers.get("content-length", "-1")) >= 0:
                    break
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    head, sep, body = received.partition(b"\r\n\r\n")
    assert sep, f"no complete response: {received[:300]!r}"
    headers = _headers(head)
    return int(head.split(b" ")[1]), headers, body[:int(headers.get("content-length", len(body)))]


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _error_code(answer: _Answer) -> str:
    status, headers, body = answer
    assert headers.get("content-type") == "application/json", answer
    return str(json.loads(body)["errors"][0]["code"])


# -- 401


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_an_upstream_refusal_is_a_401_with_a_challenge(daemon: Daemon, hop: Hop, method: str) -> None:
    hop.answer(401, {"WWW-Authenticate": 'Basic realm="upstream"'}, path_contains="/private/secret/",
               code="UNAUTHORIZED", message="hop: authentication required")
    status, headers, body = http_request(daemon.url + "/v2/private/secret/manifests/v1?ns=docker.io", method)
    assert status == 401, (status, headers, body)
    assert hop.count(path_contains="/private/secret/") >= 1, hop.summary()
    challenge = headers.get("www-authenticate", "")
    assert challenge.startswith(("Basic ", "Bearer ")), headers
    # Ours, not the upstream's realm: that one is no use to our client.
    assert "upstream" not in challenge
    if method == "GET":
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"


# -- Host and 400s


@pytest.mark.parametrize("head", [
    pytest.param(b"GET /v2/ HTTP/1.1\r\n\r\n", id="no-host"),
    pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
    pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: a b@c/d\r\n\r\n", id="malformed-host"),
    pytest.param(b"GET /v2/ HTTP/1.0\r\nHost: [::1\r\n\r\n", id="bad-ip-literal"),
    pytest.param(b"GET /v2/\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n", id="non-ascii-target"),
    pytest.param(b"G\xc3\x89T /v2/ HTTP/1.1\r\nHost: a\r\n\r\n", id="non-ascii-method"),
    pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n", id="header-without-colon"),
    pytest.param(b"GET /v2/ HTTP/2.5\r\nHost: a\r\n\r\n", id="bad-version"),
    pytest.param(bytes.fromhex("160301") + b"\x00\x2f\x01\x00\x00\x2b\x03\x03" + b"\x00" * 40,
                 id="tls-client-hello"),
])
def test_a_malformed_head_gets_400_with_a_spec_error_body(daemon: Daemon, head: bytes) -> None:
    answer = _raw(daemon, head)
    assert answer[0] == 400, answer
    assert _error_code(answer) == "UNSUPPORTED"
    assert answer[1].get("connection") == "close"


@pytest.mark.parametrize("head", [
    pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n", id="host-port"),
    pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: [::1]:5000\r\n\r\n", id="ipv6"),
    pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: \r\n\r\n", id="empty-host"),
    pytest.param(b"GET /v2/ HTTP/1.0\r\n\r\n", id="http10-without-host"),
])
def test_a_well_formed_host_is_served(daemon: Daemon, head: bytes) -> None:
    assert _raw(daemon, head + b"")[0] == 200


# -- conditional requests


def _assert_304(answer: _Answer, digest: str) -> None:
    status, headers, body = answer
    assert status == 304, answer
    assert headers.get("etag") == f'"{digest}"', headers
    assert body == b""


def test_a_blob_the_client_holds_is_answered_304(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["oci"]
    layer = image.layers[0]
    url = daemon.url + f"/v2/docker.io/{image.repo}/blobs/{layer.digest}"
    now = datetimeToString().decode("ascii")
    holding = [
        {"If-None-Match": f'"{layer.digest}"'},
        {"If-None-Match": "*"},
        {"If-None-Match": f'W/"{layer.digest}"'},
        {"If-None-Match": f'"sha256:{"0" * 64}", W/"{layer.digest}"'},
        {"If-Modified-Since": now},
    ]
    # Cold: the 304 costs the upstream no blob GET.
    for headers in holding:
        for method in ("GET", "HEAD"):
            _assert_304(http_request(url, method, headers=headers), layer.digest)
    assert hop.count("GET", f"/blobs/{layer.digest}") == 0, hop.summary()
    # Not the client's copy: the whole blob, If-Modified-Since ignored
    # beside If-None-Match (RFC 9110 §13.2.2).
    status, headers, body = http_request(url, headers={"If-None-Match": f'"sha256:{"0" * 64}"',
                                                       "If-Modified-Since": now})
    assert status == 200 and body == layer.data
    assert headers["etag"] == f'"{layer.digest}"'
    # Warm, the same.
    for headers_sent in holding:
        _assert_304(http_request(url, headers=headers_sent), layer.digest)
    # A malformed date is ignored (RFC 9110 §13.1.3).
    status, _, body = http_request(url, headers={"If-Modified-Since": "yesterday"})
    assert status == 200 and body == layer.data
    # A blob that does not exist is not "not modified".
    missing = daemon.url + f"/v2/docker.io/{image.repo}/blobs/sha256:{'1' * 64}"
    status, _, _ = http_request(missing, headers={"If-None-Match": "*"})
    assert status == 404


def test_a_manifest_the_client_holds_is_answered_304(
        ocitest_images: dict[str, Image], daemon: Daemon) -> None:
    image = ocitest_images["oci"]
    accept = {"Accept": image.manifest_media_type}
    base = daemon.url + f"/v2/docker.io/{image.repo}/manifests/"
    digest = image.manifest_digest
    now = datetimeToString().decode("ascii")
    assert image.tag is not None
    for reference in (image.tag, digest):
        for method in ("GET", "HEAD"):
            for condition in ({"If-None-Match": f'"{digest}"'}, {"If-None-Match": f'W/"{digest}"'},
                              {"If-None-Match": "*"}):
                answer = http_request(base + reference, method, headers={**accept, **condition})
                _assert_304(answer, digest)
                assert answer[1].get("docker-content-digest") == digest
    # By digest, the content cannot have changed since any date.
    _assert_304(http_request(base + digest, headers={**accept, "If-Modified-Since": now}), digest)
    # A tag's manifest has no modification date: the condition is ignored.
    status, _, body = http_request(base + image.tag, headers={**accept, "If-Modified-Since": now})
    assert status == 200 and body == image.manifest_bytes
    status, _, body = http_request(base + image.tag, headers={**accept, "If-None-Match": '"other"'})
    assert status == 200 and body == image.manifest_bytes


# -- no reprs in error messages


def test_a_502_names_what_failed_without_a_repr(
        ocitest_images: dict[str, Image], daemon_factory: Callable[..., Daemon], hop: Hop) -> None:
    image = ocitest_images["oci"]
    daemon = daemon_factory()
    hop.fail_mid_stream(10, path_contains="/manifests/", times=None)
    status, headers, body = http_request(
        daemon.url + f"/v2/docker.io/{image.repo}/manifests/{image.manifest_digest}",
        headers={"Accept": image.manifest_media_type})
    assert status == 502, (status, body)
    message = json.loads(body)["errors"][0]["message"]
    assert "Failure" not in message and " object at 0x" not in message and "<" not in message, message
    assert "ConnectionLost" in message or "ResponseFailed" in message or "PotentialDataLoss" in message, message
