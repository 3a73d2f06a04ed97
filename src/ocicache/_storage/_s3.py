"""
A small S3 client on the Twisted stack: requests are signed with
botocore's SigV4 signer (AWS "Signature Version 4", the one S3 and
radosgw accept) and sent with treq, so nothing blocks the reactor.

It speaks only what a blob store needs: objects (PUT, GET with Range,
HEAD, DELETE), multipart uploads (create, upload part, complete, abort,
list) and presigned GETs.  botocore is used for signing alone, never for
sending: its own transport is blocking.

Bodies are never buffered here beyond one part: C{get} returns the
L{IResponse} for the caller to stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from xml.etree import ElementTree

from attrs import field, frozen
from hyperlink import DecodedURL
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

__all__ = [
    "ObjectInfo",
    "S3Client",
    "S3Credentials",
    "S3Error",
    "S3Unavailable",
    "Upload",
]

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAX_LISTING = 8 << 20
"""The largest XML answer read (a listing page, an error)."""


class S3Error(Exception):
    """
    The object store refused a request: C{code} is S3's error code
    (C{NoSuchKey}, C{NoSuchUpload}, C{AccessDenied}, ...).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        Exception.__init__(self, f"S3 answered {status} {code}: {message}")
        self.status = status
        self.code = code


class S3Unavailable(Exception):
    """The object store could not be reached, or answered with a server error."""


@frozen
class S3Credentials:
    """An access key pair; the secret never appears in C{repr()}."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@frozen
class ObjectInfo:
    key: str
    size: int
    etag: str


@frozen
class Upload:
    """A multipart upload in progress (C{initiated}: S3's ISO 8601 time)."""

    key: str
    upload_id: str
    initiated: str


Hasher = Callable[[bytes], Awaitable[str]]
"""Hex SHA-256 of a body, computed off the reactor (the disk pool)."""


async def _hash_here(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class S3Client:
    """
    One bucket on one S3 endpoint.

    @param path_style: C{http://host/bucket/key} rather than
        C{http://bucket.host/key} (radosgw and MinIO without wildcard DNS).
    @param credentials: the key pair, or where to get the current one
        (a credential program, asked before each request; it keeps its
        answer for its lifetime).
    @param hasher: hashes a part body for its signature; give it the disk
        pool, since a 16 MiB part costs tens of milliseconds.
    """

    def __init__(
        self,
        http: HTTPClient,
        endpoint: DecodedURL,
        bucket: str,
        credentials: S3Credentials | Callable[[], Awaitable[S3Credentials]],
        region: str = "us-east-1",
        path_style: bool = True,
        hasher: Hasher = _hash_here,
        timeout: float = 60.0,
    ) -> None:
        self._http = http
        self._endpoint = endpoint
        self.bucket = bucket
        self._path_style = path_style
        self._hasher = hasher
        self._timeout = timeout
        self._region = region
        self._credentials = credentials

    async def _signing(self) -> Any:
        """The key pair to sign with now, as botocore takes it."""
        # botocore is imported here: only an S3-backed daemon needs it.
        from botocore.credentials import Credentials

        current = self._credentials
        if not isinstance(current, S3Credentials):
            try:
                current = await current()
            except Exception as e:
                # The program's own failure was logged where it ran; its
                # output never reaches this message.
                raise S3Unavailable(f"no S3 credentials: {type(e).__name__}") from None
        return Credentials(current.access_key, current.secret_key, current.session_token)

    # -- objects

    async def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        """Store a whole (small) object; returns its ETag."""
        response = await self._send("PUT", key, body=body, headers={"content-type": content_type})
        await self._expect(response, 200)
        return _etag(response)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> IResponse:
        """
        The object's response, unread, for the caller to stream: C{200}, or
        C{206} for a range (RFC 9110 §14.2; C{end} is exclusive here).
        Raises L{S3Error} (C{NoSuchKey}) when it is not there.
        """
        headers = {}
        if start or end is not None:
            last = "" if end is None else str(end - 1)
            headers["range"] = f"bytes={start}-{last}"
        response = await self._send("GET", key, headers=headers)
        if response.code not in (200, 206):
            await self._raise(response)
        return response

    async def head(self, key: str) -> ObjectInfo | None:
        response = await self._send("HEAD", key)
        await _drain(response)
        if response.code == 404:
            return None
        if response.code != 200:
            raise _error(response.code, "", "HEAD failed")
        length = response.headers.getRawHeaders(b"content-length", [b"0"])[0]
        return ObjectInfo(key, int(length), _etag(response))

    async def delete(self, key: str) -> None:
        """Remove an object; an object already gone is no error (S3 answers 204 either way)."""
        response = await self._send("DELETE", key)
        await self._expect(response, 204, 200, 404)

    async def objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under C{prefix} (ListObjectsV2, all pages)."""
        found: list[ObjectInfo] = []
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix)]
            if token is not None:
                query.append(("continuation-token", token))
            root = await self._xml("GET", "", query)
            for item in root.iter(f"{_NS}Contents"):
                found.append(ObjectInfo(_text(item, "Key"), int(_text(item, "Size") or 0),
                                        _text(item, "ETag").strip('"')))
            if _text(root, "IsTruncated") != "true":
                return found
            token = _text(root, "NextContinuationToken")

    # -- multipart uploads

    async def start_upload(self, key: str, content_type: str = "application/octet-stream") -> str:
        """CreateMultipartUpload: returns the upload id."""
        root = await self._xml("POST", key, [("uploads", "")], headers={"content-type": content_type})
        return _text(root, "UploadId")

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        """UploadPart (numbers 1 to 10,000, each part but the last at least 5 MiB): returns its ETag."""
        response = await self._send("PUT", key, [("partNumber", str(number)), ("uploadId", upload_id)], body=body)
        await self._expect(response, 200)
        return _etag(response)

    async def complete_upload(self, key: str, upload_id: str, etags: Sequence[str]) -> None:
        """
        CompleteMultipartUpload: only now does the object appear, whole.  S3
        may answer 200 and report an error in the body, so the body is read.
        """
        parts = "".join(
            f"<Part><PartNumber>{number}</PartNumber><ETag>\"{etag}\"</ETag></Part>"
            for number, etag in enumerate(etags, 1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        root = await self._xml("POST", key, [("uploadId", upload_id)], body=body)
        if root.tag in ("Error", f"{_NS}Error"):
            raise S3Error(200, _text(root, "Code"), _text(root, "Message"))

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; one already gone (C{NoSuchUpload}) is no error."""
        response = await self._send("DELETE", key, [("uploadId", upload_id)])
        await self._expect(response, 204, 200, 404)

    async def uploads(self, prefix: str) -> list[Upload]:
        """ListMultipartUploads under C{prefix}, all pages."""
        found: list[Upload] = []
        markers: list[tuple[str, str]] = []
        while True:
            root = await self._xml("GET", "", [("uploads", ""), ("prefix", prefix), *markers])
            for item in root.iter(f"{_NS}Upload"):
                found.append(Upload(_text(item, "Key"), _text(item, "UploadId"), _text(item, "Initiated")))
            if _text(root, "IsTruncated") != "true":
                return found
            markers = [("key-marker", _text(root, "NextKeyMarker")),
                       ("upload-id-marker", _text(root, "NextUploadIdMarker"))]

    # -- buckets and presigning

    async def create_bucket(self) -> None:
        """Create the bucket; one that exists and is ours is no error."""
        response = await self._send("PUT", "")
        if response.code == 409:
            body = await _read(response)
            code, _ = _error_fields(body)
            if code == "BucketAlreadyOwnedByYou":
                return
            raise S3Error(409, code, "cannot create the bucket")
        await self._expect(response, 200)

    async def presigned_get(self, key: str, expires: int) -> str:
        """A URL that GETs C{key} without credentials for C{expires} seconds (SigV4 query auth)."""
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="GET", url=self._url(key, []).to_uri().to_text())
        S3SigV4QueryAuth(await self._signing(), "s3", self._region, expires).add_auth(request)
        url: str = request.url
        return url

    # -- the machinery

    def _url(self, key: str, query: Iterable[tuple[str, str]]) -> DecodedURL:
        base = self._endpoint
        segments = [s for s in key.split("/") if s] if key else []
        if self._path_style:
            url = base.child(self.bucket, *segments) if segments else base.child(self.bucket, "")
        else:
            url = base.replace(host=f"{self.bucket}.{base.host}").child(*segments)
        for name, value in query:
            url = url.add(name, value)
        return url

    async def _send(
        self,
        method: str,
        key: str,
        query: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> IResponse:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        url = self._url(key, query).to_uri().to_text()
        # SigV4 signs the payload's hash (x-amz-content-sha256), computed
        # off the reactor for a part-sized body.
        payload = await self._hasher(body) if body else _EMPTY_SHA256
        request = AWSRequest(method=method, url=url, data=body,
                             headers={**(headers or {}), "x-amz-content-sha256": payload})
        SigV4Auth(await self._signing(), "s3", self._region).add_auth(request)
        sent = Headers({name.encode("ascii"): [str(value).encode("ascii")] for name, value in request.headers.items()})
        try:
            response: IResponse = await self._http.request(
                method, url, headers=sent, data=body or None, unbuffered=True, timeout=self._timeout,
            )
        except Exception as e:
            # The endpoint's address, never the signed headers.
            raise S3Unavailable(f"S3 at {self._endpoint.host}: {type(e).__name__}") from None
        if response.code >= 500:
            await _drain(response)
            raise S3Unavailable(f"S3 at {self._endpoint.host} answered {response.code}")
        return response

    async def _xml(
        self,
        method: str,
        key: str,
        query: Iterable[tuple[str, str]],
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> ElementTree.Element:
        response = await self._send(method, key, query, body, headers)
        if response.code != 200:
            await self._raise(response)
        data = await _read(response)
        try:
            return ElementTree.fromstring(data)
        except ElementTree.ParseError:
            raise S3Unavailable("S3 answered with a body that is not XML") from None

    async def _expect(self, response: IResponse, *codes: int) -> None:
        if response.code in codes:
            await _drain(response)
            return
        await self._raise(response)

    async def _raise(self, response: IResponse) -> None:
        body = await _read(response)
        code, message = _error_fields(body)
        raise _error(response.code, code, message)


def _error(status: int, code: str, message: str) -> S3Error:
    return S3Error(status, code or str(status), message or "request refused")


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", ""
    return _text(root, "Code"), _text(root, "Message")[:200]


def _text(element: ElementTree.Element, name: str) -> str:
    found = element.find(f"{_NS}{name}")
    if found is None:
        found = element.find(name)
    return (found.text or "") if found is not None else ""


def _etag(response: IResponse) -> str:
    value: bytes = response.headers.getRawHeaders(b"etag", [b""])[0]
    return value.decode("ascii", "replace").strip('"')


async def _read(response: IResponse) -> bytes:
    """An XML answer, bounded: S3 never sends a listing or error this large."""
    import treq

    collected = bytearray()
    done: Deferred[None] = treq.collect(response, _bounded(collected))
    await done
    return bytes(collected)


def _bounded(collected: bytearray) -> Callable[[bytes], None]:
    def take(data: bytes) -> None:
        if len(collected) + len(data) > MAX_LISTING:
            raise S3Unavailable("S3 answered with an oversized body")
        collected.extend(data)

    return take


async def _drain(response: IResponse) -> None:
    import treq

    await treq.collect(response, lambda data: None)
