"""
The S3 client (L{ocicache._storage._s3}) against a real radosgw on
loopback: objects, Range, multipart uploads that appear only when
completed, aborts, listings and presigned URLs.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import pytest_twisted
from hyperlink import DecodedURL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

from ocicache._storage._s3 import S3Client, S3Credentials, S3Error
from ocitest.ceph import Radosgw

pytestmark = pytest.mark.integration

PART = 5 << 20


@pytest.fixture
def s3(radosgw: Radosgw, bucket_name: str) -> Iterator[S3Client]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    bucket = bucket_name
    client = S3Client(HTTPClient(Agent(reactor, pool=pool)), DecodedURL.from_text(radosgw.url), bucket,
                      S3Credentials(radosgw.access_key, radosgw.secret_key))
    pytest_twisted.blockon(Deferred.fromCoroutine(client.create_bucket()))
    yield client


async def _body(client: S3Client, key: str, start: int = 0, end: int | None = None) -> tuple[int, bytes]:
    import treq

    response = await client.get(key, start, end)
    return response.code, await treq.content(response)


@pytest_twisted.ensureDeferred
async def test_an_object_round_trips_with_ranges(s3: S3Client) -> None:
    data = os.urandom(1 << 20)
    etag = await s3.put("blobs/a", data)
    assert etag == hashlib.md5(data).hexdigest()
    assert await _body(s3, "blobs/a") == (200, data)
    assert await _body(s3, "blobs/a", 1000, 2000) == (206, data[1000:2000])
    assert await _body(s3, "blobs/a", len(data) - 10) == (206, data[-10:])
    info = await s3.head("blobs/a")
    assert info is not None and info.size == len(data)
    await s3.delete("blobs/a")
    assert await s3.head("blobs/a") is None
    with pytest.raises(S3Error) as raised:
        await s3.get("blobs/a")
    assert raised.value.code == "NoSuchKey" and raised.value.status == 404
    await s3.delete("blobs/a")  # already gone: no error


@pytest_twisted.ensureDeferred
async def test_a_multipart_object_appears_only_when_completed(s3: S3Client) -> None:
    parts = [os.urandom(PART), os.urandom(PART), os.urandom(1234)]
    upload = await s3.start_upload("blobs/big")
    etags = [await s3.upload_part("blobs/big", upload, number, part) for number, part in enumerate(parts, 1)]
    assert await s3.head("blobs/big") is None
    assert [u.upload_id for u in await s3.uploads("blobs/")] == [upload]
    await s3.complete_upload("blobs/big", upload, etags)
    assert await _body(s3, "blobs/big") == (200, b"".join(parts))
    assert await s3.uploads("blobs/") == []
    assert [o.key for o in await s3.objects("blobs/")] == ["blobs/big"]


@pytest_twisted.ensureDeferred
async def test_an_aborted_upload_leaves_nothing(s3: S3Client) -> None:
    upload = await s3.start_upload("blobs/gone")
    await s3.upload_part("blobs/gone", upload, 1, os.urandom(PART))
    await s3.abort_upload("blobs/gone", upload)
    assert await s3.uploads("") == []
    assert await s3.head("blobs/gone") is None
    assert await s3.objects("") == []
    await s3.abort_upload("blobs/gone", upload)  # twice: no error


@pytest_twisted.ensureDeferred
async def test_listings_page(s3: S3Client) -> None:
    keys = [f"many/{i:04d}" for i in range(1100)]  # past one page of 1,000
    for key in keys:
        await s3.put(key, b"x")
    assert [o.key for o in await s3.objects("many/")] == keys


@pytest_twisted.ensureDeferred
async def test_a_presigned_url_needs_no_credentials(s3: S3Client) -> None:
    await s3.put("signed", b"presigned bytes")
    url = await s3.presigned_get("signed", 60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned bytes"
    tampered = url.replace("signed?", "signed2?")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(tampered, timeout=10)
    assert raised.value.code in (403, 404)


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_refused(radosgw: Radosgw, s3: S3Client) -> None:
    pool = HTTPConnectionPool(reactor, persistent=False)
    wrong = S3Client(HTTPClient(Agent(reactor, pool=pool)), DecodedURL.from_text(radosgw.url), s3.bucket,
                     S3Credentials(radosgw.access_key, "not-the-secret"))
    with pytest.raises(S3Error) as raised:
        await wrong.put("x", b"y")
    assert raised.value.status == 403
    assert "not-the-secret" not in str(raised.value)
