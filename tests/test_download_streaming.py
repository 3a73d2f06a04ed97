"""
Tests for L{ocicache._fetch._download}: the L{Download} that writes and hashes one
upstream body, and the L{Streamer}s that send it to many clients.

Everything runs on a L{MemoryReactorClock}: the disk "thread pool" is a
fake whose work runs synchronously (L{SyncPool}) or only when the test says
so (L{ManualPool}), and each client is a real C{twisted.web} request on an
L{HTTPChannel} whose transport is a L{StringTransport} that can push back
like a slow socket.  The flow is therefore fully deterministic.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from ocicache._fetch import _download, _passthrough
from ocicache._fetch._download import Download
from ocicache._fetch._incoming import DownloadError
from ocicache._fetch._key import Verifier
from ocicache._fetch._source import StoredFile
from ocicache._spec._reference import Digest
from ocicache._storage._store import Kind, Store
from ocicache._web import _streamer
from ocicache._web._streamer import Streamer
from ocitest.fakes import Reactor, SyncPool, disk_of, run

# -- the fake reactor and disk pools


class ManualPool:
    """A disk pool whose work waits until the test runs it."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[bool, object], None], Callable[..., object], tuple[object, ...]]] = []

    def callInThreadWithCallback(self, onResult: Callable[[bool, object], None],
                                 f: Callable[..., object], *args: object, **kwargs: object) -> None:
        assert not kwargs
        self.pending.append((onResult, f, args))

    def run_one(self) -> None:
        onResult, f, args = self.pending.pop(0)
        SyncPool().callInThreadWithCallback(onResult, f, *args)

    def fail_one(self, error: BaseException) -> None:
        onResult, f, args = self.pending.pop(0)
        onResult(False, Failure(error))

    def in_flight(self) -> int:
        """Bytes handed to the disk thread and not yet written."""
        total = 0
        for _, f, args in self.pending:
            if f is _download._write_batch:
                batch = cast("list[bytes]", args[2])  # _write_batch(fd, hasher, batch)
                total += sum(len(chunk) for chunk in batch)
        return total


@implementer(IPushProducer)
class UpstreamProducer:
    """The upstream transport, as a L{Download} sees it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


# -- clients: real twisted.web requests over a fake socket


class ClientTransport(StringTransport):
    """
    The server's side of one client connection.  With a C{window}, it
    behaves like a socket whose peer reads slowly: once C{window} unread
    bytes are buffered it pauses its producer, until L{drain}.
    """

    def __init__(self, window: int | None = None) -> None:
        # Twisted's untyped methods are called as looked up on Twisted's
        # class, which untyped_calls_exclude covers; through this subclass
        # they would not be.
        StringTransport.__init__(self)
        self.window = window
        self.aborted = False
        self.blocked = False
        self._read = 0

    def value(self) -> bytes:
        """Everything written so far."""
        data: bytes = StringTransport.value(self)
        return data

    def pushed(self) -> IPushProducer:
        """The producer the channel registered: the request being answered."""
        assert self.producer is not None
        producer: IPushProducer = self.producer
        return producer

    def write(self, data: bytes) -> None:
        StringTransport.write(self, data)
        if (self.window is not None and not self.blocked and self.producer is not None
                and len(self.value()) - self._read >= self.window):
            self.blocked = True
            self.pushed().pauseProducing()

    def drain(self) -> None:
        self._read = len(self.value())
        if self.blocked:
            self.blocked = False
            self.pushed().resumeProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        StringTransport.abortConnection(self)


class _Hold(Resource):
    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)  # twisted's untyped __init__, looked up on twisted's class
        self.requests: list[Request] = []

    def render_GET(self, request: Request) -> object:
        self.requests.append(request)
        return NOT_DONE_YET


class Client:
    """
    One HTTP/1.1 client with a GET in progress, answered by a L{Streamer}.
    """

    def __init__(self, clock: Reactor, window: int | None = None) -> None:
        self.clock = clock
        self.transport = ClientTransport(window)
        resource = _Hold()
        site = Site(resource, timeout=None, reactor=clock)
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(b"GET /blob HTTP/1.1\r\nHost: ocicache\r\n\r\n")
        [self.request] = resource.requests
        self.sent: list[int] = []
        self.streamer: Streamer | None = None

    def stream(self, source: Any, start: int = 0, end: int | None = None,
               length: int | None = None) -> Streamer:
        """
        Answer with C{[start, end)} of C{source}, announcing C{length} as the
        Content-Length (none: chunked).
        """
        if isinstance(source, Download):
            source.acquire()
        if length is not None:
            self.request.setHeader(b"content-length", b"%d" % length)
        self.streamer = Streamer(self.request, source, start, end, self.clock)
        self.streamer.start().addCallback(self.sent.append)
        return self.streamer

    def pause(self) -> None:
        """The socket is full: the channel pauses the request's producer."""
        self.transport.pushed().pauseProducing()

    def resume(self) -> None:
        self.transport.pushed().resumeProducing()

    def hang_up(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionLost("the client went away")))

    def response(self) -> tuple[int, dict[bytes, bytes], bytes, bool]:
        """
        The status, headers and body sent so far, and whether a chunked body
        was properly terminated.
        """
        raw = self.transport.value()
        if not raw:
            return 0, {}, b"", False
        head, sep, body = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") == b"chunked":
            body, terminated = _dechunk(body)
            return status, headers, body, terminated
        return status, headers, body, False

    def body(self) -> bytes:
        return self.response()[2]

    @property
    def complete(self) -> bool:
        """
        The response ended cleanly: finished, not aborted, and every byte
        its framing promised was sent.
        """
        if self.transport.aborted or not self.request.finished:
            return False
        status, headers, body, terminated = self.response()
        if b"content-length" in headers:
            return len(body) == int(headers[b"content-length"])
        return terminated


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out: list[bytes] = []
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out), rest == b"\r\n"
        if len(rest) < size + 2:
            out.append(rest[:size])
            break
        out.append(rest[:size])
        data = rest[size + 2:]
    return b"".join(out), False


# -- fixtures and helpers


@pytest.fixture(autouse=True)
def small_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Small chunks and batches, so that kilobytes exercise what megabytes
    do in production: several writes per turn, several turns, several
    batches.
    """
    monkeypatch.setattr(_streamer, "CHUNK", 1000)
    monkeypatch.setattr(_download, "BATCH", 4000)


def blob(size: int, seed: int = 0) -> tuple[bytes, Digest]:
    data = random.Random(seed).randbytes(size)
    return data, Digest("sha256", hashlib.sha256(data).hexdigest())


def feed(download: Download, data: bytes, clock: Reactor, piece: int = 3000,
         between: Callable[[int], None] = lambda index: None) -> None:
    for index, offset in enumerate(range(0, len(data), piece)):
        download.write(data[offset:offset + piece])
        run(clock)
        between(index)


def temp_files(store: Store) -> list[str]:
    return os.listdir(store.tmp_dir)


def committed_bytes(store: Store, digest: Digest) -> bytes | None:
    return store.read(Kind.BLOB, digest)


def outcome(download: Download) -> list[object]:
    seen: list[object] = []
    download.settled.addBoth(lambda result: seen.append(result))
    return seen


# -- several clients, one download


def test_consumers_at_different_speeds_each_get_every_byte(clock: Reactor, store: Store) -> None:
    """
    A fast client, a slow one whose socket keeps filling up, and one that
    is paused from the start all receive exactly the blob, while the
    download commits it as soon as the upstream is done.
    """
    data, digest = blob(50_000)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    upstream = UpstreamProducer()
    download.attach(upstream)
    fast, slow, idle = Client(clock), Client(clock, window=2500), Client(clock)
    for client in (fast, slow, idle):
        client.stream(download, 0, len(data), length=len(data))
    idle.pause()

    def between(index: int) -> None:
        if index % 4 == 0:
            slow.transport.drain()
            run(clock)

    feed(download, data, clock, between=between)
    download.finish()
    run(clock)

    assert download.committed
    assert committed_bytes(store, digest) == data
    assert store.path(Kind.BLOB, digest) == os.path.join(
        store.root, "blobs", "sha256", digest.encoded[:2], digest.encoded)
    assert temp_files(store) == []
    assert fast.complete and fast.body() == data
    # The slow client is still behind, and the idle one has had nothing.
    assert not slow.complete and data.startswith(slow.body())
    assert len(slow.body()) < len(data)
    assert idle.transport.value() == b""
    assert upstream.calls == []

    for _ in range(100):
        if slow.complete:
            break
        slow.transport.drain()
        run(clock)
    idle.resume()
    run(clock)

    for client in (fast, slow, idle):
        status, headers, body, _ = client.response()
        assert status == 200
        assert headers[b"content-length"] == b"%d" % len(data)
        assert body == data
        assert client.complete
        assert client.sent == [len(data)]


@pytest.mark.parametrize("how", ["connection lost", "stopProducing"])
def test_consumer_hanging_up_stops_nothing_else(clock: Reactor, store: Store, how: str) -> None:
    data, digest = blob(40_000, seed=1)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    upstream = UpstreamProducer()
    download.attach(upstream)
    stayer, leaver, other = Client(clock), Client(clock), Client(clock, window=5000)
    for client in (stayer, leaver, other):
        client.stream(download, 0, len(data), length=len(data))

    def between(index: int) -> None:
        other.transport.drain()
        run(clock)
        if index == 4:
            if how == "connection lost":
                leaver.hang_up()
            else:
                leaver.transport.pushed().stopProducing()

    feed(download, data, clock, between=between)
    download.finish()
    run(clock)
    for _ in range(100):
        other.transport.drain()
        run(clock)
        if other.complete:
            break

    assert download.committed
    assert committed_bytes(store, digest) == data
    assert temp_files(store) == []
    assert upstream.calls == []
    assert stayer.complete and stayer.body() == data
    assert other.complete and other.body() == data
    # The one that left got a prefix, and its streamer is done with it.
    assert len(leaver.sent) == 1
    assert 0 < leaver.sent[0] < len(data)
    assert leaver.body() == data[:leaver.sent[0]]
    assert not leaver.complete


def test_late_joiner_starts_from_byte_zero(clock: Reactor, store: Store) -> None:
    data, digest = blob(30_000, seed=2)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    early = Client(clock)
    early.stream(download, 0, len(data), length=len(data))
    feed(download, data[:18_000], clock)
    assert early.body() == data[:18_000]

    late = Client(clock)
    late.stream(download, 0, len(data), length=len(data))
    run(clock)
    # Everything already on disk, at once.
    assert late.body() == data[:18_000]

    download.write(data[18_000:])
    download.finish()
    run(clock)
    assert early.complete and early.body() == data
    assert late.complete and late.body() == data
    assert committed_bytes(store, digest) == data


def test_ranges_within_and_beyond_the_written_part(clock: Reactor, store: Store) -> None:
    data, digest = blob(30_000, seed=3)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    feed(download, data[:12_000], clock)

    inside = Client(clock)
    inside.stream(download, 1_000, 5_000, length=4_000)
    straddling = Client(clock)
    straddling.stream(download, 11_000, 20_000, length=9_000)
    tail = Client(clock)
    tail.stream(download, 25_000, None, length=5_000)
    run(clock)

    # The range already on disk is served and finished at once, before the
    # download is done.
    assert inside.complete and inside.body() == data[1_000:5_000]
    assert inside.sent == [4_000]
    assert straddling.body() == data[11_000:12_000]
    assert not straddling.complete
    assert tail.body() == b"" and not tail.complete

    download.write(data[12_000:])
    download.finish()
    run(clock)
    assert straddling.complete and straddling.body() == data[11_000:20_000]
    assert tail.complete and tail.body() == data[25_000:]
    assert download.committed


def test_unknown_size_streams_until_the_end(clock: Reactor, store: Store) -> None:
    data, digest = blob(25_000, seed=4)
    download = Download(disk_of(clock, SyncPool(), store), digest, None)
    first = Client(clock)
    first.stream(download, 0, None)
    feed(download, data[:10_000], clock)
    second = Client(clock)
    second.stream(download, 0, None)
    run(clock)
    assert first.body() == data[:10_000]
    assert second.body() == data[:10_000]
    assert not first.complete

    feed(download, data[10_000:], clock)
    # All bytes are out, but the end is not known until the upstream says.
    assert first.body() == data and not first.complete
    download.finish()
    run(clock)

    assert download.committed
    assert download.size == len(data)
    assert committed_bytes(store, digest) == data
    for client in (first, second):
        status, headers, body, terminated = client.response()
        assert status == 200
        assert headers[b"transfer-encoding"] == b"chunked"
        assert body == data and terminated
        assert client.complete
        assert client.sent == [len(data)]


# -- failures


def assert_failed_cleanly(download: Download, store: Store, digest: Digest,
                          seen: list[object], error: type[BaseException]) -> None:
    assert download.failure is not None and download.failure.check(error)
    assert not download.committed
    assert committed_bytes(store, digest) is None
    assert not os.path.exists(store.path(Kind.BLOB, digest))
    assert temp_files(store) == []
    assert download.settled.called
    assert len(seen) == 1


def test_upstream_failure_aborts_every_unfinished_consumer(clock: Reactor, store: Store) -> None:
    data, digest = blob(40_000, seed=5)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    upstream = UpstreamProducer()
    download.attach(upstream)
    fast = Client(clock)
    fast.stream(download, 0, len(data), length=len(data))
    slow = Client(clock, window=3000)
    slow.stream(download, 0, len(data), length=len(data))
    idle = Client(clock)
    idle.stream(download, 0, len(data), length=len(data))
    idle.pause()
    ranged = Client(clock)
    ranged.stream(download, 0, 2_000, length=2_000)
    feed(download, data[:20_000], clock)
    assert ranged.complete
    assert slow.transport.blocked
    assert not slow.transport.aborted and not idle.transport.aborted

    download.fail(Failure(ConnectionLost("upstream went away")))
    # Promptly: paused consumers are cut at once, without being resumed
    # and without the reactor turning.
    for client in (fast, slow, idle):
        assert client.transport.aborted
        assert not client.complete
        assert len(client.sent) == 1
    run(clock)

    assert upstream.calls == ["stop"]
    assert fast.body() == data[:20_000]
    assert data.startswith(slow.body()) and len(slow.body()) < 20_000
    assert idle.transport.value() == b""
    # A client that already had all of its range is left alone.
    assert not ranged.transport.aborted
    assert ranged.body() == data[:2_000]
    assert_failed_cleanly(download, store, digest, seen, ConnectionLost)

    # Writes after the failure are ignored and nothing is resurrected.
    download.write(data[20_000:])
    download.finish()
    run(clock)
    assert_failed_cleanly(download, store, digest, seen, ConnectionLost)


def test_digest_mismatch_aborts_everyone_and_commits_nothing(clock: Reactor, store: Store) -> None:
    data, _ = blob(30_000, seed=6)
    _, digest = blob(30_000, seed=7)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    clients = [Client(clock), Client(clock, window=4000)]
    for client in clients:
        client.stream(download, 0, len(data), length=len(data))
    feed(download, data[:-3000], clock)
    download.write(data[-3000:])
    download.finish()
    run(clock)

    for client in clients:
        assert client.transport.aborted
        assert not client.complete
        assert len(client.body()) < len(data)
    assert_failed_cleanly(download, store, digest, seen, DownloadError)
    assert "does not match" in str(download.failure.value)  # type: ignore[union-attr]


def test_short_body_aborts_everyone_and_commits_nothing(clock: Reactor, store: Store) -> None:
    data, digest = blob(30_000, seed=8)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    client = Client(clock)
    client.stream(download, 0, len(data), length=len(data))
    feed(download, data[:-10], clock)
    assert client.body() == data[:-10]
    download.finish()
    run(clock)

    assert client.transport.aborted and not client.complete
    assert client.body() == data[:-10]
    assert_failed_cleanly(download, store, digest, seen, DownloadError)
    assert str(download.failure.value) == f"upstream sent {len(data) - 10} bytes of {len(data)}"  # type: ignore[union-attr]


def test_more_bytes_than_declared_fails(clock: Reactor, store: Store) -> None:
    data, digest = blob(20_000, seed=9)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    upstream = UpstreamProducer()
    download.attach(upstream)
    client = Client(clock)
    client.stream(download, 0, len(data), length=len(data))
    feed(download, data[:15_000], clock)
    download.write(data[15_000:] + b"extra")
    # At once: the upstream is told to stop.
    assert download.failure is not None
    assert upstream.calls == ["stop"]
    run(clock)
    assert client.transport.aborted and not client.complete
    assert_failed_cleanly(download, store, digest, seen, DownloadError)


def test_more_bytes_than_declared_after_the_last_write_fails(clock: Reactor, store: Store) -> None:
    data, digest = blob(20_000, seed=10)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    feed(download, data, clock)
    download.write(b"x")
    download.finish()
    run(clock)
    assert_failed_cleanly(download, store, digest, seen, DownloadError)


def test_more_bytes_than_declared_fails_even_with_a_write_in_flight(clock: Reactor, store: Store) -> None:
    """
    The size check must count the bytes the disk thread is writing: here
    the whole body is in flight when the extra byte arrives.
    """
    data, digest = blob(3_000, seed=11)
    pool = ManualPool()
    download = Download(disk_of(clock, pool, store), digest, len(data))
    upstream = UpstreamProducer()
    download.attach(upstream)
    download.write(data)
    assert pool.in_flight() == len(data)
    download.write(b"x")
    assert download.failure is not None
    assert upstream.calls == ["stop"]


def test_failure_during_a_disk_write_removes_the_temp_file_afterwards(
        clock: Reactor, store: Store) -> None:
    data, digest = blob(5_000, seed=13)
    pool = ManualPool()
    download = Download(disk_of(clock, pool, store), digest, len(data))
    seen = outcome(download)
    client = Client(clock)
    client.stream(download, 0, len(data), length=len(data))
    download.write(data[:2_000])
    assert pool.in_flight() == 2_000
    download.fail(Failure(ConnectionLost("upstream went away")))
    assert client.transport.aborted
    # The disk thread still holds the file; it goes once the write returns.
    pool.run_one()
    run(clock)
    assert pool.pending == []
    assert_failed_cleanly(download, store, digest, seen, ConnectionLost)


def test_commit_failure_lets_readers_finish_but_keeps_nothing(
        clock: Reactor, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    data, digest = blob(20_000, seed=15)

    def cannot_commit(*args: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "commit", cannot_commit)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    client = Client(clock, window=4000)
    client.stream(download, 0, len(data), length=len(data))
    feed(download, data, clock)
    download.finish()
    run(clock)
    assert download.settled.called and not download.committed
    for _ in range(100):
        client.transport.drain()
        run(clock)
        if client.complete:
            break
    # The bytes were verified: the reader gets them all, from its own
    # descriptor, although they are not kept.
    assert client.complete and client.body() == data
    assert committed_bytes(store, digest) is None
    assert temp_files(store) == []
    assert len(seen) == 1


def test_unknown_size_failure_aborts_without_terminating_the_chunks(
        clock: Reactor, store: Store) -> None:
    data, _ = blob(10_000, seed=16)
    _, digest = blob(10_000, seed=17)
    download = Download(disk_of(clock, SyncPool(), store), digest, None)
    seen = outcome(download)
    client = Client(clock)
    client.stream(download, 0, None)
    feed(download, data, clock)
    download.finish()
    run(clock)
    status, headers, body, terminated = client.response()
    assert body == data
    assert not terminated
    assert client.transport.aborted and not client.complete
    assert_failed_cleanly(download, store, digest, seen, DownloadError)


def test_settled_fails_for_observers(clock: Reactor, store: Store) -> None:
    """
    C{settled} "fires with the committed path ... or fails": an observer
    that adds callbacks after construction (as L{BlobService} does) must
    see the failure, not C{None}.
    """
    data, digest = blob(1_000, seed=18)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    download.fail(Failure(ConnectionLost("upstream went away")))
    assert len(seen) == 1
    assert isinstance(seen[0], Failure) and seen[0].check(ConnectionLost)


def test_settled_fires_with_the_committed_path(clock: Reactor, store: Store) -> None:
    data, digest = blob(1_000, seed=19)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    download.write(data)
    download.finish()
    run(clock)
    assert seen == [store.path(Kind.BLOB, digest)]


def test_full_body_is_not_finished_before_it_is_verified(clock: Reactor, store: Store) -> None:
    """
    The upstream's bytes are all on disk before it says the body ended (a
    chunked body's last chunk arriving late, say).  A client must not get
    a complete-looking response that then turns out not to be the blob.
    """
    data, _ = blob(10_000, seed=20)
    _, digest = blob(10_000, seed=21)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    client = Client(clock)
    client.stream(download, 0, len(data), length=len(data))
    feed(download, data, clock)
    # Everything is on disk; the last byte is held back until verified.
    assert client.body() == data[:-1]
    assert not client.request.finished
    download.finish()
    run(clock)
    assert not client.complete
    assert client.transport.aborted
    assert client.body() == data[:-1]
    assert_failed_cleanly(download, store, digest, seen, DownloadError)


def test_empty_body_is_not_finished_before_it_is_verified(clock: Reactor, store: Store) -> None:
    """
    An upstream that declares a length of 0 for a blob that is not empty:
    with no byte to hold back, the client must still wait for the digest
    check rather than get a complete-looking empty blob.
    """
    _, digest = blob(100, seed=35)
    download = Download(disk_of(clock, SyncPool(), store), digest, 0)
    seen = outcome(download)
    client = Client(clock)
    client.stream(download, 0, 0, length=0)
    run(clock)
    assert not client.request.finished
    download.finish()
    run(clock)
    assert client.transport.aborted and not client.complete
    assert_failed_cleanly(download, store, digest, seen, DownloadError)


def test_empty_blob_is_served_once_verified(clock: Reactor, store: Store) -> None:
    data, digest = blob(0)
    download = Download(disk_of(clock, SyncPool(), store), digest, 0)
    client = Client(clock)
    client.stream(download, 0, 0, length=0)
    download.finish()
    run(clock)
    assert client.complete and client.body() == b""
    assert download.committed
    assert committed_bytes(store, digest) == b""


def test_full_body_is_finished_once_verified(clock: Reactor, store: Store) -> None:
    data, digest = blob(10_000, seed=27)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    client = Client(clock)
    client.stream(download, 0, len(data), length=len(data))
    feed(download, data, clock)
    assert client.body() == data[:-1]
    download.finish()
    run(clock)
    assert client.complete and client.body() == data
    assert download.committed


def test_commit_declined_by_before_commit_keeps_nothing(clock: Reactor, store: Store) -> None:
    data, digest = blob(8_000, seed=28)
    asked: list[tuple[Digest, int]] = []

    async def no_room(d: Digest, size: int) -> bool:
        asked.append((d, size))
        return False

    download = Download(disk_of(clock, SyncPool(), store), digest, None, before_commit=partial(no_room, digest))
    seen = outcome(download)
    client = Client(clock)
    client.stream(download, 0, None)
    feed(download, data, clock)
    download.finish()
    run(clock)
    # Asked with the length learnt from the body itself.
    assert asked == [(digest, len(data))]
    assert seen == [None]
    assert not download.committed and download.failure is None
    assert client.complete and client.body() == data
    assert committed_bytes(store, digest) is None
    assert temp_files(store) == []


def test_before_commit_error_keeps_nothing_but_serves(clock: Reactor, store: Store) -> None:
    data, digest = blob(8_000, seed=29)

    async def broken(d: Digest, size: int) -> bool:
        raise RuntimeError("the metadata database is gone")

    download = Download(disk_of(clock, SyncPool(), store), digest, len(data), before_commit=partial(broken, digest))
    seen = outcome(download)
    client = Client(clock)
    client.stream(download, 0, len(data), length=len(data))
    feed(download, data, clock)
    download.finish()
    run(clock)
    assert seen == [None]
    assert client.complete and client.body() == data
    assert committed_bytes(store, digest) is None
    assert temp_files(store) == []


def test_failing_a_download_that_is_committing_is_ignored(clock: Reactor, store: Store) -> None:
    """
    Once the bytes are verified, a late C{fail()} (say, a shutdown sweeping
    the in-flight downloads) cannot make them bad: the commit goes on and
    settled fires once, with the path.
    """
    data, digest = blob(4_000, seed=30)
    pool = ManualPool()
    download = Download(disk_of(clock, pool, store), digest, len(data))
    seen = outcome(download)
    download.write(data)
    download.finish()
    pool.run_one()
    run(clock)
    assert [f for _, f, _ in pool.pending] == [store.commit]
    download.fail(Failure(DownloadError("ocicache is stopping")))
    pool.run_one()
    run(clock)
    assert download.failure is None
    assert seen == [store.path(Kind.BLOB, digest)]
    assert download.committed
    assert committed_bytes(store, digest) == data


# -- the disk failing: pass-through


def failing_disk(monkeypatch: pytest.MonkeyPatch, from_call: int, chunks_written: int = 0,
                 partial: bool = True) -> list[int]:
    """
    Make the disk thread fail from its C{from_call}th batch on, after
    writing C{chunks_written} chunks of that batch and (if C{partial}) half
    of the next.
    """
    calls: list[int] = []
    real = _download._write_batch

    def write_batch(fd: int, hasher: Verifier, batch: list[bytes]) -> tuple[int, OSError | None]:
        calls.append(len(batch))
        if len(calls) < from_call:
            return real(fd, hasher, batch)
        done, error = real(fd, hasher, batch[:chunks_written])
        assert error is None
        if partial and chunks_written < len(batch):
            os.write(fd, batch[chunks_written][:len(batch[chunks_written]) // 2])
        return chunks_written, OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_download, "_write_batch", write_batch)
    return calls


@pytest.mark.parametrize("partial", [True, False])
def test_disk_failure_turns_the_download_into_a_pass_through(
        clock: Reactor, store: Store, monkeypatch: pytest.MonkeyPatch, partial: bool) -> None:
    """
    The disk fails part-way through a batch (one chunk written, and maybe
    half of the next): clients already reading get every byte, exactly
    once, from disk and then from memory; nothing is kept.
    """
    data, digest = blob(30_000, seed=31)
    calls = failing_disk(monkeypatch, from_call=2, chunks_written=1, partial=partial)
    errors: list[OSError] = []
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data),
                        on_disk_error=errors.append)
    seen = outcome(download)
    upstream = UpstreamProducer()
    download.attach(upstream)
    fast, slow = Client(clock), Client(clock, window=2000)
    for client in (fast, slow):
        client.stream(download, 0, len(data), length=len(data))
    # One batch of one piece, then one batch of two pieces, which fails.
    download.write(data[:3_000])
    download.write(data[3_000:6_000])
    download.write(data[6_000:9_000])
    run(clock)
    assert calls == [1, 2]
    assert download.passthrough
    assert [e.errno for e in errors] == [errno.ENOSPC]

    def between(index: int) -> None:
        slow.transport.drain()
        run(clock)

    feed(download, data[9_000:], clock, between=between)
    download.finish()
    for _ in range(100):
        slow.transport.drain()
        run(clock)
        if slow.complete:
            break

    assert fast.complete and fast.body() == data
    assert slow.complete and slow.body() == data
    assert calls == [1, 2]  # no more disk writes once it failed
    assert seen == [None]
    assert download.failure is None and not download.committed
    assert committed_bytes(store, digest) is None
    assert temp_files(store) == []
    assert "stop" not in upstream.calls


def test_pass_through_still_verifies_the_digest(
        clock: Reactor, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = blob(12_000, seed=32)
    _, digest = blob(12_000, seed=33)
    failing_disk(monkeypatch, from_call=1)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    client = Client(clock)
    client.stream(download, 0, len(data), length=len(data))
    feed(download, data, clock)
    assert download.passthrough
    assert client.body() == data[:-1]
    download.finish()
    run(clock)
    assert client.transport.aborted and not client.complete
    assert_failed_cleanly(download, store, digest, seen, DownloadError)


def test_pass_through_window_pauses_the_upstream_for_the_slowest_client(
        clock: Reactor, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    In pass-through the bytes live in memory until the slowest client has
    them: the upstream is paused while that window is full, and resumed
    once the slowest client reads (or leaves).
    """
    monkeypatch.setattr(_passthrough, "HIGH_WATER", 3_000)
    monkeypatch.setattr(_passthrough, "LOW_WATER", 1_000)
    data, digest = blob(12_000, seed=34)
    failing_disk(monkeypatch, from_call=1)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    seen = outcome(download)
    upstream = UpstreamProducer()
    download.attach(upstream)
    fast, lagging, leaving = Client(clock), Client(clock), Client(clock)
    for client in (fast, lagging, leaving):
        client.stream(download, 0, len(data), length=len(data))
    lagging.pause()
    leaving.pause()

    sent = 0
    while "pause" not in upstream.calls:
        download.write(data[sent:sent + 500])
        sent += 500
        run(clock)
        assert sent <= 3_500
    assert download.passthrough
    assert fast.body() == data[:sent]
    # The lagging client catches up; the one still paused holds the window.
    lagging.resume()
    run(clock)
    assert lagging.body() == data[:sent]
    assert upstream.calls == ["pause"]
    # The last one holding the window leaves: the upstream may go on.
    leaving.hang_up()
    run(clock)
    assert upstream.calls == ["pause", "resume"]

    download.write(data[sent:])
    download.finish()
    run(clock)
    assert fast.complete and fast.body() == data
    assert lagging.complete and lagging.body() == data
    assert seen == [None]
    assert temp_files(store) == []


# -- back-pressure on the upstream


def test_upstream_is_paused_at_high_water_and_resumed_below_low_water(
        clock: Reactor, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_download, "HIGH_WATER", 1000)
    monkeypatch.setattr(_download, "LOW_WATER", 300)
    monkeypatch.setattr(_download, "BATCH", 200)
    data, digest = blob(1_500, seed=22)
    pool = ManualPool()
    download = Download(disk_of(clock, pool, store), digest, len(data))
    upstream = UpstreamProducer()
    download.attach(upstream)
    pieces = [data[i:i + 100] for i in range(0, len(data), 100)]

    # The first piece goes straight to the disk thread, which is stuck;
    # the next ten queue up to HIGH_WATER.
    received = 0
    for piece in pieces[:10]:
        download.write(piece)
        received += len(piece)
        assert upstream.calls == []
    download.write(pieces[10])
    received += 100
    assert received - pool.in_flight() == 1000
    assert upstream.calls == ["pause"]
    # A transport may deliver a little more after pausing; no second pause.
    download.write(pieces[11])
    received += 100
    assert upstream.calls == ["pause"]

    waiting_at_each_step = []
    while pool.pending and upstream.calls == ["pause"]:
        pool.run_one()
        run(clock)
        # What was queued when the disk thread reported back (before the
        # next batch went to it).
        waiting_at_each_step.append(received - download.available)
    assert upstream.calls == ["pause", "resume"]
    # Resumed only once the queue fell below LOW_WATER, not before.
    assert waiting_at_each_step[-1] < 300
    assert all(waiting >= 300 for waiting in waiting_at_each_step[:-1])
    assert len(waiting_at_each_step) > 1

    for piece in pieces[12:]:
        download.write(piece)
    download.finish()
    while pool.pending:
        pool.run_one()
        run(clock)
    assert upstream.calls == ["pause", "resume"]
    assert download.committed
    assert committed_bytes(store, digest) == data


# -- stored files


def test_stored_file_keeps_serving_after_unlink(clock: Reactor, store: Store) -> None:
    data, digest = blob(12_345, seed=23)
    store.write_small(Kind.BLOB, digest, data)
    opened = store.open(Kind.BLOB, digest)
    assert opened is not None
    fd, size = opened
    assert size == len(data)
    source = StoredFile(fd, size)
    assert store.remove(Kind.BLOB, digest)
    assert not os.path.exists(store.path(Kind.BLOB, digest))

    whole = Client(clock, window=3000)
    whole.stream(source, 0, size, length=size)
    run(clock)
    for _ in range(100):
        if whole.complete:
            break
        whole.transport.drain()
        run(clock)
    assert whole.complete and whole.body() == data
    assert whole.sent == [len(data)]
    # The streamer released the source, and with it the descriptor.
    with pytest.raises(OSError) as raised:
        os.fstat(fd)
    assert raised.value.errno == errno.EBADF


def test_stored_file_range(clock: Reactor, store: Store) -> None:
    data, digest = blob(12_345, seed=24)
    store.write_small(Kind.BLOB, digest, data)
    opened = store.open(Kind.BLOB, digest)
    assert opened is not None
    client = Client(clock)
    client.stream(StoredFile(*opened), 10_000, None, length=2_345)
    run(clock)
    assert client.complete and client.body() == data[10_000:]


def test_stored_file_shorter_than_promised_is_cut(clock: Reactor, store: Store) -> None:
    """
    A file that ends before the length announced (truncated on disk) is
    never finished as if it were whole.
    """
    data, digest = blob(5_000, seed=25)
    store.write_small(Kind.BLOB, digest, data)
    opened = store.open(Kind.BLOB, digest)
    assert opened is not None
    fd, _ = opened
    os.truncate(store.path(Kind.BLOB, digest), 4_000)
    client = Client(clock)
    client.stream(StoredFile(fd, 5_000), 0, None, length=5_000)
    run(clock)
    assert client.body() == data[:4_000]
    assert client.transport.aborted and not client.complete


def test_hanging_up_releases_the_download_for_the_last_user(clock: Reactor, store: Store) -> None:
    """
    The read descriptor outlives the download while a streamer needs it,
    and is closed by the last one to leave.
    """
    data, digest = blob(10_000, seed=26)
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data))
    reader = Client(clock)
    reader.stream(download, 0, len(data), length=len(data))
    reader.pause()
    download.write(data)
    download.finish()
    run(clock)
    assert download.committed
    # Still readable by the paused client after the commit.
    reader.resume()
    run(clock)
    assert reader.complete and reader.body() == data
    with pytest.raises(OSError):
        download.read(0, 1)


# -- abandonment: nobody reading means nobody pays for the rest


def _abandoning(clock: Reactor, store: Store, data: bytes, digest: Digest) -> tuple[Download, UpstreamProducer]:
    download = Download(disk_of(clock, SyncPool(), store), digest, len(data), abandon_after=10.0,
                        keep_fraction=0.5)
    upstream = UpstreamProducer()
    download.attach(upstream)
    return download, upstream


def test_a_download_nobody_reads_is_abandoned(clock: Reactor, store: Store) -> None:
    data, digest = blob(10_000, seed=40)
    download, upstream = _abandoning(clock, store, data, digest)
    seen = outcome(download)
    reader = Client(clock)
    reader.stream(download, 0, len(data), length=len(data))
    download.write(data[:2_000])
    run(clock)
    reader.hang_up()
    run(clock)
    clock.advance(9.9)
    assert not download.ended
    clock.advance(0.2)
    assert download.ended and not download.committed
    assert isinstance(seen[0], Failure) and seen[0].check(DownloadError)
    assert "stop" in upstream.calls
    assert not os.path.exists(download.temp_path)
    assert store.open(Kind.BLOB, digest) is None


def test_a_reader_back_within_the_grace_period_keeps_it(clock: Reactor, store: Store) -> None:
    data, digest = blob(10_000, seed=41)
    download, upstream = _abandoning(clock, store, data, digest)
    first = Client(clock)
    first.stream(download, 0, len(data), length=len(data))
    download.write(data[:2_000])
    run(clock)
    first.hang_up()
    run(clock)
    clock.advance(5)
    # containerd comes back with Range: bytes=N-.
    second = Client(clock)
    second.stream(download, 2_000, len(data), length=len(data) - 2_000)
    clock.advance(20)
    assert not download.ended
    download.write(data[2_000:])
    download.finish()
    run(clock)
    assert download.committed and second.complete and second.body() == data[2_000:]
    assert "stop" not in upstream.calls


def test_a_download_mostly_here_is_finished_for_the_cache(clock: Reactor, store: Store) -> None:
    data, digest = blob(10_000, seed=42)
    download, upstream = _abandoning(clock, store, data, digest)
    reader = Client(clock)
    reader.stream(download, 0, len(data), length=len(data))
    download.write(data[:6_000])
    run(clock)
    reader.hang_up()
    run(clock)
    clock.advance(11)
    assert not download.ended
    download.write(data[6_000:])
    download.finish()
    run(clock)
    assert download.committed and "stop" not in upstream.calls
