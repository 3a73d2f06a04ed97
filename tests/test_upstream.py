"""
The upstream client against small real HTTP servers on loopback: the
Bearer token flow, Basic auth, and redirects that never carry
C{Authorization} to another origin (RFC 9110 §15.4).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from hyperlink import DecodedURL
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from ocicache._ops._config import Credentials, UpstreamConfig
from ocicache._upstream._client import Upstream, make_pool
from ocicache._upstream._tokens import TokenCache

BODY = b"layer bytes " * 1000
DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()
PASSWORD = "s3cret-pa55"


class _Recorder(Resource):
    """
    A leaf that records every request (raw URI and headers) and answers
    through C{respond}.
    """

    isLeaf = True

    def __init__(self, respond: Callable[[Any], bytes]) -> None:
        Resource.__init__(self)  # twisted's untyped __init__, looked up on twisted's class
        self.seen: list[tuple[bytes, dict[bytes, list[bytes]]]] = []
        self._respond = respond

    def render(self, request: Any) -> bytes:
        self.seen.append((request.uri, {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}))
        return self._respond(request)


@pytest.fixture
def servers() -> Any:
    listening = []

    def serve(resource: Resource, interface: str = "127.0.0.1") -> str:
        # listenTCP is annotated with ServerFactory[_ProtoWithFactory], and
        # ServerFactory is invariant, so Twisted's own Site does not match.
        port = reactor.listenTCP(0, Site(resource), interface=interface)  # type: ignore[arg-type]
        listening.append(port)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return f"http://{interface}:{address.port}"

    yield serve
    for port in listening:
        port.stopListening()


def _upstream(url: str, credentials: Credentials | None = None) -> Upstream:
    config = UpstreamConfig(name="registry.test", url=DecodedURL.from_text(url), credentials=credentials)
    return Upstream(config, reactor, make_pool(reactor), TokenCache(reactor))


def _basic(request: Any) -> bool:
    expected = b"Basic " + base64.b64encode(f"bot:{PASSWORD}".encode())
    return bool(request.getHeader(b"authorization") == expected)


@pytest_twisted.ensureDeferred
async def test_a_redirect_to_another_host_drops_authorization(servers: Any) -> None:
    cdn = _Recorder(lambda request: BODY)
    cdn_url = servers(cdn)

    def registry_answer(request: Any) -> bytes:
        if not _basic(request):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="registry"')
            return b""
        request.setResponseCode(307)
        # Another origin: same address, another port (RFC 6454 §4).
        request.setHeader(b"location", f"{cdn_url}/blobs/{DIGEST}?signature=abc".encode())
        return b""

    registry = _Recorder(registry_answer)
    upstream = _upstream(servers(registry), Credentials("bot", PASSWORD))
    response = await upstream.blob("GET", "team/app", DIGEST)
    assert response.code == 200
    assert await upstream.read_body(response, 1 << 20) == BODY
    # The registry got the credentials (after its challenge)...
    assert [headers.get(b"authorization") is not None for _, headers in registry.seen] == [False, True]
    # ...the CDN never did.
    assert len(cdn.seen) == 1
    assert b"authorization" not in cdn.seen[0][1]
    # The digest's ":" travels literally, as container clients send it.
    assert registry.seen[0][0] == f"/v2/team/app/blobs/{DIGEST}".encode()


@pytest_twisted.ensureDeferred
async def test_a_redirect_on_the_same_origin_keeps_authorization(servers: Any) -> None:
    def answer(request: Any) -> bytes:
        if not _basic(request):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="registry"')
            return b""
        if request.path.startswith(b"/v2/"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"/storage/blob")
            return b""
        return BODY

    registry = _Recorder(answer)
    upstream = _upstream(servers(registry), Credentials("bot", PASSWORD))
    response = await upstream.blob("GET", "team/app", DIGEST)
    assert response.code == 200 and await upstream.read_body(response, 1 << 20) == BODY
    assert registry.seen[-1][0] == b"/storage/blob"
    assert registry.seen[-1][1].get(b"authorization") is not None


@pytest_twisted.ensureDeferred
async def test_bearer_token_flow_fetches_once_and_reuses_the_token(servers: Any) -> None:
    issued = []

    def token_answer(request: Any) -> bytes:
        issued.append(request.args)
        assert _basic(request), "the token is requested with the configured credentials"
        return json.dumps({"token": "tok-123", "expires_in": 300}).encode()

    tokens = _Recorder(token_answer)
    token_url = servers(tokens)

    def registry_answer(request: Any) -> bytes:
        if request.getHeader(b"authorization") != b"Bearer tok-123":
            request.setResponseCode(401)
            request.setHeader(
                b"www-authenticate",
                f'Bearer realm="{token_url}/token",service="registry.test",'
                f'scope="repository:team/app:pull"'.encode(),
            )
            return b""
        request.setHeader(b"content-type", b"application/vnd.oci.image.manifest.v1+json")
        return b"{}"

    registry = _Recorder(registry_answer)
    upstream = _upstream(servers(registry), Credentials("bot", PASSWORD))
    for _ in range(3):
        response = await upstream.manifest("GET", "team/app", "v1", ["application/vnd.oci.image.manifest.v1+json"])
        assert response.code == 200 and await upstream.read_body(response, 1 << 20) == b"{}"
    assert len(issued) == 1
    assert issued[0][b"service"] == [b"registry.test"]
    assert issued[0][b"scope"] == [b"repository:team/app:pull"]
    # One 401 to learn the challenge; then the cached token goes up front.
    assert len(registry.seen) == 4


@pytest_twisted.ensureDeferred
async def test_an_unreachable_upstream_is_a_clean_error(servers: Any) -> None:
    from ocicache._upstream._errors import UpstreamUnavailable

    upstream = _upstream("http://127.0.0.1:1")
    with pytest.raises(UpstreamUnavailable) as raised:
        await upstream.blob("GET", "team/app", DIGEST)
    assert "registry.test" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_a_stalled_small_body_times_out(servers: Any) -> None:
    from twisted.web.server import NOT_DONE_YET

    from ocicache._upstream._errors import UpstreamUnavailable

    stalled = []

    def answer(request: Any) -> Any:
        request.setHeader(b"content-length", b"100")
        request.write(b"{")
        stalled.append(request)
        return NOT_DONE_YET  # and never another byte

    registry = _Recorder(answer)
    config = UpstreamConfig(name="registry.test", url=DecodedURL.from_text(servers(registry)),
                            response_timeout=0.5)
    upstream = Upstream(config, reactor, make_pool(reactor), TokenCache(reactor))
    response = await upstream.manifest("GET", "team/app", "v1", ["application/vnd.oci.image.manifest.v1+json"])
    assert response.code == 200
    with pytest.raises(UpstreamUnavailable) as raised:
        await upstream.read_body(response, 1 << 20)
    assert "stalled" in str(raised.value)
    for request in stalled:
        request.finish()


class _Chunks(Protocol):
    """Records the size of every chunk of a body as it arrives."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.sizes.append(len(data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_blob_body_arrives_in_reads_larger_than_twisteds_64_kib(servers: Any) -> None:
    """
    Upstream connections read up to 1 MiB per recv: fewer trips through
    the HTTP client for a big body (Twisted's transports read 64 KiB).
    """
    big = bytes(range(256)) * (16 << 12)  # 16 MiB
    upstream = _upstream(servers(_Recorder(lambda request: big)))
    response = await upstream.blob("GET", "team/app", "sha256:" + hashlib.sha256(big).hexdigest())
    assert response.code == 200
    chunks = _Chunks()
    response.deliverBody(chunks)
    await chunks.done
    assert sum(chunks.sizes) == len(big)
    assert max(chunks.sizes) > 64 << 10
