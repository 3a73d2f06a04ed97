"""
Tests for L{ocicache._web._sendfile}: the sendfile producer, on a fake TCP
transport that behaves as Twisted's does (a pull producer is asked for more
once the transport's buffer is empty) and a fake C{sendfile} standing in
for a socket that takes so many bytes and then says C{EAGAIN}.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProducer, IPullProducer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ocicache._fetch._download import Download
from ocicache._fetch._incoming import DownloadError
from ocicache._fetch._source import StoredFile
from ocicache._spec._reference import Digest
from ocicache._storage._store import Kind, Store
from ocicache._web import _sendfile
from ocicache._web._sendfile import SendfileStreamer
from ocitest.fakes import Reactor, SyncPool, disk_of, run


class SocketTransport(StringTransport):
    """
    A TCP transport as far as the streamer uses it: its producer
    registration, C{startWriting}, its descriptor, aborting.
    """

    def __init__(self) -> None:
        StringTransport.__init__(self)
        self.streaming: bool | None = None
        self.writing = 0
        self.aborted = False
        self.disconnected = False
        self.disconnecting = False

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is registered already")
        self.producer, self.streaming = producer, streaming
        if not streaming:
            pull: Any = producer
            pull.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    def write(self, data: bytes) -> None:
        # As FileDescriptor.write: buffer, and wait for the socket.
        StringTransport.write(self, data)
        self.startWriting()

    def writeSequence(self, data: Any) -> None:
        StringTransport.writeSequence(self, data)
        self.startWriting()

    def value(self) -> bytes:
        written: bytes = StringTransport.value(self)
        return written

    def startWriting(self) -> None:
        self.writing += 1

    def fileno(self) -> int:
        return -1

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnected = True

    def drain(self) -> None:
        """The reactor found the socket writable and the buffer empty."""
        self.writing = 0
        if self.producer is not None and not self.streaming:
            assert IPullProducer.providedBy(self.producer)
            self.producer.resumeProducing()


class Socket:
    """A fake C{sendfile}: takes up to C{room} bytes per drain, then EAGAIN."""

    def __init__(self, room: int, partial: int | None = None) -> None:
        self.room = room
        self.left = room
        self.partial = partial
        self.received = bytearray()
        self.calls = 0

    def sendfile(self, out_fd: int, in_fd: int, offset: int, count: int) -> int:
        self.calls += 1
        if self.left <= 0:
            raise BlockingIOError()
        count = min(count, self.left, self.partial or count)
        data = os.pread(in_fd, count, offset)
        self.received += data
        self.left -= len(data)
        return len(data)

    def drained(self) -> None:
        self.left = self.room


class _Hold(Resource):
    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.requests: list[Request] = []

    def render_GET(self, request: Request) -> object:
        self.requests.append(request)
        return NOT_DONE_YET


class Client:
    def __init__(self, clock: Reactor) -> None:
        self.transport = SocketTransport()
        resource = _Hold()
        site = Site(resource, timeout=None, reactor=clock)
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(b"GET /blob HTTP/1.1\r\nHost: ocicache\r\n\r\n")
        [self.request] = resource.requests
        self.channel_producer = self.transport.producer
        self.sent: list[int] = []

    def stream(self, clock: Reactor, source: Any, socket: Socket, start: int, end: int,
               stall_timeout: float = 60.0) -> SendfileStreamer:
        if isinstance(source, Download):
            source.acquire()
        self.request.setHeader(b"content-length", b"%d" % (end - start))
        streamer = SendfileStreamer(self.request, source, start, end, clock, stall_timeout=stall_timeout,
                                    sendfile=socket.sendfile)
        streamer.start().addCallback(self.sent.append)
        return streamer

    def pump(self, socket: Socket, rounds: int = 1000) -> None:
        for _ in range(rounds):
            if not self.transport.writing:
                return
            socket.drained()
            self.transport.drain()

    def hang_up(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionLost("the client went away")))


def _stored(store: Store, size: int, seed: int = 0) -> tuple[bytes, StoredFile]:
    data = random.Random(seed).randbytes(size)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    store.write_small(Kind.BLOB, digest, data)
    opened = store.open(Kind.BLOB, digest)
    assert opened is not None
    return data, StoredFile(*opened)


def test_headers_go_first_then_the_body_by_sendfile(clock: Reactor, store: Store) -> None:
    data, source = _stored(store, 100_000)
    client = Client(clock)
    socket = Socket(room=30_000)
    client.stream(clock, source, socket, 0, len(data))
    # Registration asks at once; the headers are still buffered, so nothing
    # is sent by sendfile until the transport has written them.
    assert socket.calls == 0
    assert client.transport.value().startswith(b"HTTP/1.1 200")
    assert client.transport.writing
    client.pump(socket)
    assert bytes(socket.received) == data
    assert client.request.finished
    assert client.sent == [len(data)]
    # The channel is the transport's producer again, for the next request.
    assert client.transport.producer is client.channel_producer
    assert client.transport.streaming is True


def test_eagain_waits_for_the_socket_without_spinning(clock: Reactor, store: Store) -> None:
    data, source = _stored(store, 50_000, seed=1)
    client = Client(clock)
    socket = Socket(room=4_000)
    client.stream(clock, source, socket, 0, len(data))
    client.transport.drain()  # the headers are out
    drains = 0
    while not client.request.finished:
        assert client.transport.writing == 1, "a full socket must be waited for, once"
        calls = socket.calls
        socket.drained()
        client.transport.drain()
        # One send fills the socket, the next says EAGAIN: no busy loop.
        assert socket.calls - calls <= 2
        drains += 1
        assert drains < 100
    assert bytes(socket.received) == data


def test_partial_sends_continue_where_they_stopped(clock: Reactor, store: Store) -> None:
    data, source = _stored(store, 40_000, seed=2)
    client = Client(clock)
    socket = Socket(room=10_000, partial=777)
    client.stream(clock, source, socket, 5_000, 35_000)
    client.transport.drain()
    client.pump(socket)
    assert bytes(socket.received) == data[5_000:35_000]
    assert client.request.finished


def test_turns_are_shared_with_other_connections(clock: Reactor, store: Store,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sendfile, "TURN", 10_000)
    data, source = _stored(store, 50_000, seed=3)
    client = Client(clock)
    socket = Socket(room=1 << 30)
    client.stream(clock, source, socket, 0, len(data))
    client.transport.drain()
    # A socket that takes everything still gets a turn's share, then the
    # reactor serves the others before this one continues.
    assert len(socket.received) == 10_000 and client.transport.writing
    client.pump(socket)
    assert bytes(socket.received) == data


def test_pause_and_resume(clock: Reactor, store: Store) -> None:
    data, source = _stored(store, 30_000, seed=4)
    client = Client(clock)
    socket = Socket(room=5_000)
    streamer = client.stream(clock, source, socket, 0, len(data))
    client.transport.drain()
    streamer.pauseProducing()
    socket.drained()
    client.transport.drain()
    assert len(socket.received) == 5_000
    streamer.resumeProducing()
    assert client.transport.writing
    client.pump(socket)
    assert bytes(socket.received) == data and client.request.finished


def test_a_hang_up_stops_only_this_client(clock: Reactor, store: Store) -> None:
    data = random.Random(5).randbytes(60_000)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    leaving, staying = Client(clock), Client(clock)
    leaving_socket, staying_socket = Socket(room=10_000), Socket(room=10_000)
    leaving.stream(clock, download, leaving_socket, 0, len(data))
    staying.stream(clock, download, staying_socket, 0, len(data))
    download.write(data[:30_000])
    run(clock)
    for client, socket in ((leaving, leaving_socket), (staying, staying_socket)):
        client.transport.drain()
        client.pump(socket)
    leaving.hang_up()
    calls = leaving_socket.calls
    download.write(data[30_000:])
    download.finish()
    run(clock)
    staying.pump(staying_socket)
    assert leaving_socket.calls == calls and leaving.sent == [len(leaving_socket.received)]
    assert bytes(staying_socket.received) == data and staying.request.finished
    assert download.committed


def test_the_final_byte_waits_for_the_digest(clock: Reactor, store: Store) -> None:
    data = random.Random(6).randbytes(20_000)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    client = Client(clock)
    socket = Socket(room=1 << 20)
    client.stream(clock, download, socket, 0, len(data))
    client.transport.drain()
    download.write(data)
    run(clock)
    client.pump(socket)
    # Every byte is on disk, but the last is not sent before verification.
    assert bytes(socket.received) == data[:-1]
    assert not client.request.finished
    download.finish()
    run(clock)
    client.pump(socket)
    assert download.committed
    assert bytes(socket.received) == data and client.request.finished


def test_a_bad_body_cuts_the_connection_short(clock: Reactor, store: Store) -> None:
    data = random.Random(7).randbytes(20_000)
    wrong = Digest("sha256", hashlib.sha256(b"something else").hexdigest())
    download = Download(disk_of(clock, SyncPool(), store), wrong, len(data))
    client = Client(clock)
    socket = Socket(room=1 << 20)
    client.stream(clock, download, socket, 0, len(data))
    client.transport.drain()
    download.write(data)
    run(clock)
    client.pump(socket)
    download.finish()
    run(clock)
    assert isinstance(download.failure, Failure) and download.failure.check(DownloadError)
    assert client.transport.aborted
    assert len(socket.received) < len(data)
    assert not client.request.finished


def test_a_client_that_takes_nothing_is_cut(clock: Reactor, store: Store) -> None:
    data, source = _stored(store, 50_000, seed=8)
    client = Client(clock)
    socket = Socket(room=1_000)
    client.stream(clock, source, socket, 0, len(data), stall_timeout=30)
    client.transport.drain()
    assert len(socket.received) == 1_000
    clock.advance(29)
    assert not client.transport.aborted
    clock.advance(2)  # no drain: the client read nothing for 30 s
    assert client.transport.aborted and not client.request.finished
