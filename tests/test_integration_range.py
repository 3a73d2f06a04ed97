"""
Range and If-Range against the real daemon (RFC 9110 §14 and §13.1.5), on
a blob that is cached and on one that is not.
"""

from __future__ import annotations

import hashlib

import pytest

from ocitest import http_request
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Image

pytestmark = pytest.mark.integration


def _target(daemon: Daemon, image: Image) -> tuple[str, str, bytes]:
    blob = max(image.layers, key=lambda b: b.size)
    return daemon.url + f"/v2/docker.io/{image.repo}/blobs/{blob.digest}", blob.digest, blob.data


@pytest.mark.parametrize("state", ["warm", "cold"])
@pytest.mark.parametrize("header", [
    pytest.param("bytes=99999999999999999999-", id="20-digits"),
    pytest.param("bytes=99999999999999999999-99999999999999999999", id="20-digits-both"),
    pytest.param("bytes=" + "9" * 3000 + "-", id="3000-digits"),
])
def test_a_range_past_any_integer_is_unsatisfiable(
        state: str, header: str, ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    url, _, data = _target(daemon, ocitest_images["oci"])
    if state == "warm":
        assert http_request(url)[0] == 200
    status, headers, body = http_request(url, headers={"Range": header})
    assert status == 416, (status, body[:200])
    assert headers.get("content-range") == f"bytes */{len(data)}"
    assert b"RANGE_INVALID" in body
    # Nothing partial was kept: the whole blob is still right.
    status, _, body = http_request(url)
    assert status == 200 and body == data


@pytest.mark.parametrize("state", ["warm", "cold"])
def test_if_range_that_does_not_match_gets_the_whole_blob(
        state: str, ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    url, digest, data = _target(daemon, ocitest_images["oci"])
    if state == "warm":
        assert http_request(url)[0] == 200
    other = '"sha256:' + hashlib.sha256(b"another blob").hexdigest() + '"'
    for if_range in (other, f'W/"{digest}"', "Tue, 01 Dec 2026 10:00:00 GMT"):
        status, headers, body = http_request(url, headers={"Range": "bytes=10-", "If-Range": if_range})
        assert status == 200, (if_range, status)
        assert "content-range" not in headers
        assert headers.get("content-length") == str(len(data))
        assert body == data


def test_if_range_that_matches_gets_the_range(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    url, digest, data = _target(daemon, ocitest_images["oci"])
    status, headers, _ = http_request(url)
    assert status == 200 and headers.get("etag") == f'"{digest}"'
    status, headers, body = http_request(url, headers={"Range": "bytes=10-", "If-Range": f'"{digest}"'})
    assert status == 206
    assert headers.get("content-range") == f"bytes 10-{len(data) - 1}/{len(data)}"
    assert body == data[10:]
