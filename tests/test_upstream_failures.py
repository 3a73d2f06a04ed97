"""
How the upstream client tells its failures apart, against real servers on
loopback: the C{kind} of L{UpstreamUnavailable} that an upstream's
C{stale_on} chooses among (connect, timeout, 5xx, protocol).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from hyperlink import DecodedURL
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from ocicache._ops._config import UpstreamConfig
from ocicache._upstream._client import Upstream, make_pool
from ocicache._upstream._errors import Unavailability, UpstreamUnavailable, answer_error
from ocicache._upstream._tokens import TokenCache

OCI = ["application/vnd.oci.image.manifest.v1+json"]


class _Silent(Protocol):
    """Takes the request and never answers."""


class _Answer(Resource):
    isLeaf = True

    def __init__(self, code: int, stall: bool = False) -> None:
        Resource.__init__(self)  # twisted's untyped __init__, looked up on twisted's class
        self._code = code
        self._stall = stall
        self.open: list[Any] = []

    def render(self, request: Any) -> Any:
        request.setResponseCode(self._code)
        if self._stall:
            request.setHeader(b"content-length", b"100")
            request.write(b"{")
            self.open.append(request)
            return NOT_DONE_YET  # and never another byte
        return b"{}"


@pytest.fixture
def listen() -> Iterator[Any]:
    ports = []

    def serve(factory: Any) -> str:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return f"http://127.0.0.1:{address.port}"

    yield serve
    for port in ports:
        port.stopListening()


def _upstream(url: str) -> Upstream:
    config = UpstreamConfig(name="registry.test", url=DecodedURL.from_text(url), response_timeout=0.5)
    return Upstream(config, reactor, make_pool(reactor), TokenCache(reactor))


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_a_connect_failure() -> None:
    with pytest.raises(UpstreamUnavailable) as raised:
        await _upstream("http://127.0.0.1:1").manifest("HEAD", "team/app", "v1", OCI)
    assert raised.value.kind == Unavailability.CONNECT


@pytest_twisted.ensureDeferred
async def test_no_answer_in_time_is_a_timeout(listen: Any) -> None:
    url = listen(Factory.forProtocol(_Silent))
    with pytest.raises(UpstreamUnavailable) as raised:
        await _upstream(url).manifest("HEAD", "team/app", "v1", OCI)
    assert raised.value.kind == Unavailability.TIMEOUT
    assert "registry.test" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_a_stalled_body_is_a_timeout(listen: Any) -> None:
    resource = _Answer(200, stall=True)
    upstream = _upstream(listen(Site(resource)))
    response = await upstream.manifest("GET", "team/app", "v1", OCI)
    with pytest.raises(UpstreamUnavailable) as raised:
        await upstream.read_body(response, 1 << 20)
    assert raised.value.kind == Unavailability.TIMEOUT
    for request in resource.open:
        request.finish()


@pytest.mark.parametrize(("code", "kind"), [(500, Unavailability.SERVER), (503, Unavailability.SERVER),
                                            (400, Unavailability.PROTOCOL)])
@pytest_twisted.ensureDeferred
async def test_an_error_answer_is_a_server_or_protocol_failure(
        code: int, kind: Unavailability, listen: Any) -> None:
    upstream = _upstream(listen(Site(_Answer(code))))
    response = await upstream.manifest("HEAD", "team/app", "v1", OCI)
    await upstream.discard(response)
    error = answer_error(response, LookupError())
    assert isinstance(error, UpstreamUnavailable) and error.kind == kind
