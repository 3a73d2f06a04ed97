"""
Unit tests for the bounds the registry Site holds each connection to
(L{ocicache._web._site}, L{ocicache._web._channel}): request bodies
refused unread, head limits, header, idle and stall timeouts, the
connection cap and the descriptor limit.  In memory: Twisted's L{StringTransport} and L{MemoryReactorClock}.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from ocicache._ops._config import ServerConfig
from ocicache._ops._metrics import Metrics
from ocicache._web import _descriptors, _early_answer, _site
from ocicache._web._descriptors import default_max_connections, raise_descriptor_limit
from ocicache._web._site import DrainingSite

LIMITS = ServerConfig(header_timeout=10.0, idle_timeout=20.0, stall_timeout=30.0, max_connections=1000)


class _Blob(Resource):
    """Answers every GET with C{hello}, or holds it open when C{hold} is set."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.rendered: list[Any] = []
        self.hold = False

    def render_GET(self, request: Any) -> Any:
        self.rendered.append(request)
        if self.hold:
            return NOT_DONE_YET
        request.setHeader(b"content-length", b"5")
        return b"hello"

    def render_PUT(self, request: Any) -> bytes:
        self.rendered.append(request)
        return b"rendered"

    render_POST = render_PATCH = render_DELETE = render_PUT


@implementer(ITCPTransport)
class _TCP(StringTransport):
    """A TCP-like transport: it can half-close."""

    write_closed = False

    def __init__(self) -> None:
        StringTransport.__init__(self)

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False


@pytest.fixture(autouse=True)
def no_spooling(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Fails the test if twisted.web opens a temp file to spool a body."""
    opened: list[int] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        raise AssertionError("a request body was spooled to a temp file")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    yield opened


def _site_with(
    limits: ServerConfig = LIMITS, metrics: Metrics | None = None,
) -> tuple[DrainingSite, _Blob, MemoryReactorClock]:
    clock = MemoryReactorClock()
    resource = _Blob()
    return DrainingSite(resource, clock, metrics, limits), resource, clock


def _connect(site: DrainingSite, transport: StringTransport | None = None) -> tuple[Any, StringTransport]:
    factory: Site = site  # twisted's untyped buildProtocol, looked up on twisted's class
    protocol = factory.buildProtocol(None)
    assert protocol is not None
    transport = transport if transport is not None else StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _error_code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


# -- request bodies


@pytest.mark.parametrize("method", [b"PUT", b"POST", b"PATCH", b"DELETE"])
def test_a_push_body_is_refused_before_it_is_read(method: bytes) -> None:
    site, resource, clock = _site_with()
    tcp = _TCP()
    channel, transport = _connect(site, tcp)
    channel.dataReceived(method + b" /v2/library/x/blobs/uploads/1 HTTP/1.1\r\nHost: a\r\n"
                         b"Content-Length: 1073741824\r\n\r\n" + b"x" * 5000)
    status, headers, body = _parse(transport.value())
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert _error_code(body) == "UNSUPPORTED"
    assert resource.rendered == []
    assert channel.requests[-1].content is None  # nothing was buffered
    # Half-closed; what still arrives is dropped, and the connection goes
    # after the linger.
    assert tcp.write_closed and not transport.disconnecting
    channel.dataReceived(b"x" * 65536)
    assert transport.value().count(b"HTTP/1.1") == 1
    clock.advance(_early_answer.LINGER)
    assert transport.disconnected  # aborted
    channel.connectionLost(Failure(ConnectionError()))
    assert not clock.getDelayedCalls()
    assert site.connections == 0


def test_an_endless_chunked_body_is_answered_at_once() -> None:
    site, resource, _ = _site_with()
    channel, transport = _connect(site, _TCP())
    channel.dataReceived(b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, headers, body = _parse(transport.value())
    assert status == 405 and _error_code(body) == "UNSUPPORTED"
    for _ in range(100):
        channel.dataReceived(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")
    assert transport.value().count(b"HTTP/1.1") == 1
    assert resource.rendered == []


def test_reading_stops_after_a_megabyte_of_dropped_bytes() -> None:
    site, _, _ = _site_with()
    channel, transport = _connect(site, _TCP())
    channel.dataReceived(b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n")
    assert transport.producerState == "producing"
    for _ in range(20):
        channel.dataReceived(b"z" * 65536)
    assert transport.producerState == "paused"


@pytest.mark.parametrize("method, headers", [
    (b"GET", b"Content-Length: 5\r\n"),
    (b"GET", b"Transfer-Encoding: chunked\r\n"),
    (b"GET", b"Transfer-Encoding: identity\r\n"),
    (b"HEAD", b"Content-Length: 5\r\n"),
])
def test_a_get_or_head_with_a_body_gets_413(method: bytes, headers: bytes) -> None:
    site, resource, _ = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(method + b" /v2/library/x/manifests/v1 HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\nhello")
    status, response_headers, body = _parse(transport.value())
    assert status == 413
    assert resource.rendered == []
    assert transport.disconnecting  # no half-close on a non-TCP transport
    if method == b"HEAD":
        assert body == b"" and int(response_headers["content-length"]) > 0
    else:
        assert _error_code(body) == "UNSUPPORTED" and int(response_headers["content-length"]) == len(body)


def test_expect_100_continue_gets_the_final_answer_instead() -> None:
    site, _, _ = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 1000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 405 ")
    assert b"100 Continue" not in transport.value()


def test_a_content_length_of_thousands_of_digits_is_refused_not_parsed() -> None:
    site, _, _ = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 405 ")


def test_requests_without_a_body_are_served_as_before() -> None:
    site, resource, _ = _site_with()
    channel, transport = _connect(site)
    # Content-Length: 0 is no body; two pipelined requests on one connection.
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
                         b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(resource.rendered) == 2
    assert transport.value().count(b"HTTP/1.1 200 OK") == 2
    assert not transport.disconnecting
    # And a DELETE without a body still reaches the resource.
    channel.dataReceived(b"DELETE /c HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(resource.rendered) == 3


def test_an_early_answer_is_logged_and_counted() -> None:
    metrics = Metrics()
    site, _, _ = _site_with(metrics=metrics)
    channel, _ = _connect(site)
    channel.dataReceived(b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    text = metrics.exposition().decode()
    assert 'ocicache_http_requests_total{code="405",method="other",route="other"} 1.0' in text


# -- head limits


def test_a_long_request_line_gets_414() -> None:
    site, resource, _ = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /v2/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, body = _parse(transport.value())
    assert status == 414 and _error_code(body) == "UNSUPPORTED"
    assert headers["connection"] == "close"
    assert resource.rendered == []


def test_a_long_request_line_gets_414_before_it_ends() -> None:
    site, _, _ = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /v2/" + b"a" * 4000)
    assert transport.value() == b""
    channel.dataReceived(b"a" * 4300)  # past 8 KiB, no CRLF yet
    assert transport.value().startswith(b"HTTP/1.1 414 ")


def test_a_request_line_at_the_limit_is_served() -> None:
    site, resource, _ = _site_with()
    channel, transport = _connect(site)
    line = b"GET /" + b"a" * (LIMITS.max_request_line - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == LIMITS.max_request_line
    channel.dataReceived(line + b"\r\nHost: a\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")


def test_one_huge_header_gets_431() -> None:
    site, _, _ = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n")
    status, _, body = _parse(transport.value())
    assert status == 431 and _error_code(body) == "UNSUPPORTED"


def test_headers_adding_up_past_the_limit_get_431() -> None:
    site, _, _ = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /v2/ HTTP/1.1\r\n")
    for i in range(20):
        channel.dataReceived(b"X-H%d: " % i + b"c" * 1000 + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 431 ")


def test_too_many_headers_get_431_and_the_limit_itself_is_fine() -> None:
    site, resource, _ = _site_with()
    channel, transport = _connect(site)
    fields = b"Host: a\r\n" + b"".join(b"X-N%d: 1\r\n" % i for i in range(LIMITS.max_headers - 1))
    channel.dataReceived(b"GET /ok HTTP/1.1\r\n" + fields + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    channel2, transport2 = _connect(site)
    channel2.dataReceived(b"GET /no HTTP/1.1\r\nX-One-More: a\r\n" + fields + b"\r\n")
    assert transport2.value().startswith(b"HTTP/1.1 431 ")
    assert len(resource.rendered) == 1


def test_head_limits_come_from_the_config() -> None:
    site, _, _ = _site_with(ServerConfig(max_request_line=1024, max_header_bytes=2048, max_headers=3))
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 414 ")
    channel, transport = _connect(site)
    channel.dataReceived(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 431 ")
    channel, transport = _connect(site)
    channel.dataReceived(b"GET / HTTP/1.1\r\nA: " + b"x" * 2100 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 431 ")


# -- timeouts


def test_the_head_must_arrive_within_header_timeout_however_it_trickles() -> None:
    site, resource, clock = _site_with()
    channel, transport = _connect(site)
    for byte in b"GET /v2/ HTTP/1.1\r\nHost:":
        if transport.disconnecting:
            break
        channel.dataReceived(bytes([byte]))
        clock.advance(0.5)
    assert transport.disconnecting
    assert clock.seconds() <= LIMITS.header_timeout + 0.5
    assert resource.rendered == []


def test_a_connection_that_sends_nothing_is_closed_after_header_timeout() -> None:
    site, _, clock = _site_with()
    _, transport = _connect(site)
    clock.advance(LIMITS.header_timeout - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting and transport.value() == b""


def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout() -> None:
    site, resource, clock = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    # Idle: the header timeout no longer applies, the idle timeout does.
    clock.advance(LIMITS.idle_timeout - 1)
    assert not transport.disconnecting
    channel.dataReceived(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(LIMITS.idle_timeout - 1)
    assert not transport.disconnecting and len(resource.rendered) == 2
    clock.advance(2)
    assert transport.disconnecting


def test_the_next_requests_first_byte_starts_its_header_timeout() -> None:
    site, _, clock = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(30)
    channel.dataReceived(b"G")
    clock.advance(LIMITS.header_timeout + 0.1)
    assert transport.disconnecting


def test_a_slow_response_is_not_cut_by_the_read_timeouts() -> None:
    site, resource, clock = _site_with()
    resource.hold = True
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(LIMITS.idle_timeout * 3)
    assert not transport.disconnecting
    request = resource.rendered[0]
    request.write(b"late")
    request.finish()
    assert b"late" in transport.value()


def test_a_stalled_reader_is_cut_after_stall_timeout() -> None:
    site, resource, clock = _site_with()
    resource.hold = True
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /blob HTTP/1.1\r\nHost: a\r\n\r\n")
    request = resource.rendered[0]
    request.setHeader(b"content-length", b"1000000")
    request.write(b"x" * 1000)
    # The transport's buffer is full: it pauses the channel.
    channel.pauseProducing()
    clock.advance(LIMITS.stall_timeout - 1)
    channel.resumeProducing()  # the client read some: the clock restarts
    channel.pauseProducing()
    clock.advance(LIMITS.stall_timeout - 1)
    assert not transport.disconnected
    clock.advance(2)
    assert transport.disconnected  # aborted: the client sees a short body
    channel.connectionLost(Failure(ConnectionError()))
    assert site.connections == 0 and not clock.getDelayedCalls()


def test_a_reader_that_keeps_reading_is_never_cut() -> None:
    site, resource, clock = _site_with()
    resource.hold = True
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /blob HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(1000):  # 100 s of a buffer filling and draining
        channel.pauseProducing()
        clock.advance(0.05)
        channel.resumeProducing()
        clock.advance(0.05)
        assert len(clock.getDelayedCalls()) <= 1  # no timer churn per pause
    assert not transport.disconnected


def test_a_graceful_close_does_not_wait_forever_for_a_stalled_reader() -> None:
    site, _, clock = _site_with()
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert transport.disconnecting and not transport.disconnected
    clock.advance(LIMITS.stall_timeout + 1)
    assert transport.disconnected


def test_no_timer_outlives_its_connection() -> None:
    site, _, clock = _site_with()
    for data in (b"", b"GET /a HTTP/1.1\r\n", b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
                 b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n"):
        channel, _ = _connect(site)
        channel.dataReceived(data)
        channel.connectionLost(Failure(ConnectionError()))
    assert not clock.getDelayedCalls()


# -- the connection cap


def test_connections_past_the_cap_get_503_and_the_open_ones_keep_working() -> None:
    site, resource, clock = _site_with(ServerConfig(max_connections=2))
    # Both open connections have a request in progress: none can make room.
    resource.hold = True
    first, first_transport = _connect(site)
    first.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    second, _ = _connect(site)
    second.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    tcp = _TCP()
    refused, refused_transport = _connect(site, tcp)
    status, headers, body = _parse(refused_transport.value())
    assert status == 503
    assert headers["retry-after"].isdigit()
    assert headers["connection"] == "close"
    assert _error_code(body) == "TOOMANYREQUESTS"
    assert tcp.write_closed
    refused.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")  # dropped
    assert refused_transport.value().count(b"HTTP/1.1") == 1
    clock.advance(_early_answer.LINGER)
    assert refused_transport.disconnected
    refused.connectionLost(Failure(ConnectionError()))
    assert site.connections == 2 and len(resource.rendered) == 2

    resource.rendered[0].write(b"hello")
    resource.rendered[0].finish()
    assert first_transport.value().startswith(b"HTTP/1.1 200 ")
    resource.hold = False
    # A slot frees up: the next connection is served again.
    second.connectionLost(Failure(ConnectionError()))
    third, third_transport = _connect(site)
    third.dataReceived(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert third_transport.value().startswith(b"HTTP/1.1 200 ")


def test_a_flood_past_the_cap_is_closed_without_an_answer() -> None:
    site, resource, _ = _site_with(ServerConfig(max_connections=1))
    resource.hold = True
    busy, _ = _connect(site)
    busy.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    refusals = [_connect(site) for _ in range(_site._MAX_REFUSING)]
    assert all(t.value().startswith(b"HTTP/1.1 503 ") for _, t in refusals)
    _, dropped = _connect(site)
    assert dropped.disconnected and dropped.value() == b""
    # As the 503s finish lingering, they are answered again.
    refusals[0][0].connectionLost(Failure(ConnectionError()))
    _, answered = _connect(site)
    assert answered.value().startswith(b"HTTP/1.1 503 ")


def _connect_from(site: DrainingSite, host: str) -> tuple[Any, StringTransport]:
    address = IPv4Address("TCP", host, 40000)
    factory: Site = site
    protocol = factory.buildProtocol(address)
    assert protocol is not None
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def test_at_the_cap_the_connection_idle_longest_makes_room() -> None:
    site, resource, _ = _site_with(ServerConfig(max_connections=3, max_connections_per_address=0))
    resource.hold = True
    busy, busy_transport = _connect(site)
    busy.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    resource.hold = False
    older, older_transport = _connect(site)
    newer, newer_transport = _connect(site)
    # The older one finishes a request: now it has been idle the shortest.
    older.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert older_transport.value().startswith(b"HTTP/1.1 200 ")
    admitted, admitted_transport = _connect(site)
    assert newer_transport.disconnecting and not older_transport.disconnecting
    assert not busy_transport.disconnecting
    admitted.dataReceived(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert admitted_transport.value().startswith(b"HTTP/1.1 200 ")
    newer.connectionLost(Failure(ConnectionError()))
    assert site.connections == 3
    # Then the next idle one, never the one with a request in progress.
    _connect(site)
    assert older_transport.disconnecting and not busy_transport.disconnecting


def test_one_address_is_held_to_its_share() -> None:
    site, resource, _ = _site_with(ServerConfig(max_connections=100, max_connections_per_address=2))
    held = [_connect_from(site, "10.0.0.1") for _ in range(2)]
    _, refused = _connect_from(site, "10.0.0.1")
    status, headers, body = _parse(refused.value())
    assert status == 503 and headers["retry-after"].isdigit()
    assert b"max_connections_per_address" in body and _error_code(body) == "TOOMANYREQUESTS"
    other, other_transport = _connect_from(site, "10.0.0.2")
    other.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert other_transport.value().startswith(b"HTTP/1.1 200 ")
    # A connection of its own closes: the address may open another.
    held[0][0].connectionLost(Failure(ConnectionError()))
    again, again_transport = _connect_from(site, "10.0.0.1")
    again.dataReceived(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert again_transport.value().startswith(b"HTTP/1.1 200 ")


def test_the_share_per_address_defaults_to_a_quarter_and_0_lifts_it() -> None:
    site, _, _ = _site_with(ServerConfig(max_connections=400))
    assert site.admission.per_address == 100
    site, _, _ = _site_with(ServerConfig(max_connections=400, max_connections_per_address=0))
    assert site.admission.per_address == 0
    for _ in range(150):
        _, transport = _connect_from(site, "10.0.0.1")
        assert transport.value() == b""


# -- the descriptor limit


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(_descriptors, "getrlimit", lambda which: (limits["soft"], limits["hard"]))

    def setrlimit(which: int, values: tuple[int, int]) -> None:
        limits["soft"] = values[0]

    monkeypatch.setattr(_descriptors, "setrlimit", setrlimit)
    assert raise_descriptor_limit() == 4096
    assert limits["soft"] == 4096


def test_the_default_cap_leaves_room_for_other_descriptors() -> None:
    assert default_max_connections(1024) == 384
    assert default_max_connections(65536) == 32640
    assert default_max_connections(100) == 16
    assert default_max_connections(4096) < 4096 // 2


def test_a_low_descriptor_limit_is_warned_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_descriptors, "getrlimit", lambda which: (1024, 1024))
    monkeypatch.setattr(_descriptors, "_warned_about_descriptors", False)
    with capturedLogs() as events:
        first, _, _ = _site_with(ServerConfig())
        _site_with(ServerConfig())
    assert first.max_connections == 384
    warnings = [e for e in events if "RLIMIT_NOFILE" in str(e.get("log_format", ""))]
    assert len(warnings) == 1


def test_a_configured_cap_above_the_descriptor_limit_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_descriptors, "getrlimit", lambda which: (1024, 1024))
    monkeypatch.setattr(_descriptors, "_warned_about_descriptors", False)
    with capturedLogs() as events:
        site, _, _ = _site_with(ServerConfig(max_connections=5000))
    assert site.max_connections == 5000
    assert any("max_connections = {configured}" in str(e.get("log_format", "")) for e in events)
