"""
Blob bytes from a file to a client's socket with C{sendfile(2)}: the
kernel copies them, and Python never touches them.

Twisted's transports have no sendfile (twisted#11395), so this module
takes the connection's transport for the length of one response body:

 1. the response headers are written through twisted.web as usual;
 2. the transport's producer, the L{HTTPChannel}, is swapped for this
    module's pull producer, the way twisted.web itself swaps in an HTTP/2
    connection.  A pull producer is asked for more each time the transport
    has written out everything it buffered, so the first call after the
    swap means the headers are on the wire and the socket is ours;
 3. the body goes out with C{os.sendfile}.  When the socket is full
    (C{EAGAIN}) or a turn's share is sent, C{startWriting()} has the
    reactor wake the transport once the socket is writable, and the
    transport, finding its own buffer empty, asks for more: the wait goes
    through the transport's own machinery, never a second registration of
    its descriptor;
 4. at the end the channel is the transport's producer again, and the
    request is finished as any other.

Only what is safe goes this way (L{can_sendfile}): HTTP/1.x over a plain
TCP transport, a body of known length not yet started, a platform with
C{os.sendfile}.  Everything else uses L{ocicache._web._streamer.Streamer}.
The rules are the streamer's: a slow client slows nobody, a client that
hangs up stops only itself, bytes not yet verified are never sent (the
source holds back the final byte), and a failure cuts the connection
short of its C{Content-Length}.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import cast

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IPushProducer, IReactorTime
from twisted.web.server import Request
from zope.interface import implementer

from .._fetch._source import Source
from ._streamer import abort_response

__all__ = ["SendfileStreamer", "can_sendfile"]

TURN = 4 << 20
"""Bytes one response sends before letting the reactor serve the others."""

_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ESHUTDOWN})
_sendfile: Callable[[int, int, int, int], int] | None = getattr(os, "sendfile", None)


def can_sendfile(request: Request, end: int | None) -> bool:
    """
    Whether C{request}'s body can go out with sendfile: a plain TCP
    socket (not TLS, not a wrapped or in-memory transport), a length known
    up front (no chunked encoding), nothing of the response written yet.
    """
    transport = request.transport
    return (
        _sendfile is not None
        and end is not None
        and not request.startedWriting
        and request.method in (b"GET", b"POST")  # a HEAD sends no body
        and type(transport) is tcp.Server
        and not getattr(transport, "TLS", False)
        and request.clientproto in (b"HTTP/1.1", b"HTTP/1.0")
    )


@implementer(IPullProducer)
class _Writable:
    """
    What the transport sees while a body goes out: a pull producer, asked
    for more each time the transport's own buffer is empty.
    """

    def __init__(self, streamer: SendfileStreamer) -> None:
        self._streamer = streamer
        self.registering = False

    def resumeProducing(self) -> None:
        if not self.registering:
            self._streamer._writable()

    def stopProducing(self) -> None:
        self._streamer._lost()


@implementer(IPushProducer)
class SendfileStreamer:
    """
    Sends C{[start, end)} of a L{Source} to one client with sendfile.
    C{done} fires with the number of bytes sent once the response is
    finished or abandoned.  C{stall_timeout}: a client that takes no byte
    for that long is cut.
    """

    def __init__(
        self,
        request: Request,
        source: Source,
        start: int,
        end: int,
        reactor: IReactorTime,
        on_bytes: Callable[[int], None] = lambda count: None,
        stall_timeout: float = 60.0,
        sendfile: Callable[[int, int, int, int], int] | None = None,
    ) -> None:
        self._request = request
        self._source = source
        self._pos = start
        self._end = end
        self._reactor = reactor
        self._on_bytes = on_bytes
        self._stall_timeout = stall_timeout
        self._sendfile = sendfile if sendfile is not None else _sendfile
        transport = request.transport
        if transport is None:
            raise RuntimeError("a sendfile response without a transport")
        self._transport = cast(tcp.Server, transport)  # can_sendfile checked it
        self._channel = request.channel
        self._writable_producer = _Writable(self)
        self._owning = False
        self._paused = False
        self._waiting_for_data = False
        self._stopped = False
        self._stall: IDelayedCall | None = None
        self.sent = 0
        self.done: Deferred[int] = Deferred()

    # -- the request's side

    def start(self) -> Deferred[int]:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda failure: self.stopProducing())
        self._source.subscribe(self)
        # The headers, through twisted.web: buffered in the transport now.
        self._request.write(b"")
        if self._stopped:
            return self.done
        transport = self._transport
        if transport.disconnected or transport.disconnecting:
            self._close()
            return self.done
        transport.unregisterProducer()
        self._owning = True
        self._cork(True)
        self._writable_producer.registering = True
        # A pull producer is asked at once on registration; that ask comes
        # before the headers are out and is ignored.  The next comes when
        # the transport has written them (it is writing now).
        transport.registerProducer(self._writable_producer, False)
        self._writable_producer.registering = False
        self._arm_stall()
        return self.done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._wait_for_socket()

    def stopProducing(self) -> None:
        """The client went away: stop, and let the download go on."""
        self._close()

    # -- the reader's side (L{ocicache._fetch._source.Reader})

    @property
    def position(self) -> int:
        return self._pos

    def data_arrived(self) -> None:
        if self._source.failure is not None:
            self._abort()
        elif self._waiting_for_data and not self._paused:
            self._waiting_for_data = False
            self._writable()

    # -- the socket's side

    def _wait_for_socket(self) -> None:
        if not self._stopped and self._owning:
            self._transport.startWriting()

    def _writable(self) -> None:
        """The socket may take more: send until it is full, or a turn's share is out."""
        if self._stopped or self._paused or not self._owning:
            return
        source = self._source
        sent_now = 0
        while self._pos < self._end:
            if source.failure is not None:
                self._abort()
                return
            span = source.file_span(self._pos)
            if span is None:
                if source.available > self._pos:
                    # Bytes in memory only (a pass-through): through the
                    # transport's buffer, and asked again once it drains.
                    self._write_buffered()
                    return
                self._await_data()
                return
            fd, ready = span
            ready = min(ready, self._end - self._pos)
            if ready <= 0:
                self._await_data()
                return
            try:
                count = self._send(fd, min(ready, TURN - sent_now))
            except BlockingIOError:
                self._wait_for_socket()
                return
            except OSError as e:
                if e.errno in _GONE:
                    self._close()
                else:
                    self._abort()
                return
            if count == 0:
                # The file is shorter than promised: never pretend otherwise.
                self._abort()
                return
            self._progress(count)
            sent_now += count
            if sent_now >= TURN:
                self._wait_for_socket()
                return
        if source.available >= self._end:
            # "available" reaching the end means verified.
            self._finish()
        else:
            self._await_data()

    def _send(self, fd: int, count: int) -> int:
        if self._sendfile is None:
            raise RuntimeError("no sendfile on this platform")
        return self._sendfile(self._transport.fileno(), fd, self._pos, count)

    def _write_buffered(self) -> None:
        data = self._source.read(self._pos, min(TURN, self._end - self._pos))
        if not data:
            self._abort()
            return
        self._progress(len(data))
        self._transport.write(data)

    def _progress(self, count: int) -> None:
        self._pos += count
        self.sent += count
        self._on_bytes(count)
        self._arm_stall()

    def _await_data(self) -> None:
        source = self._source
        if source.ended and source.available < self._end:
            self._abort()
        else:
            self._waiting_for_data = True
            self._disarm_stall()  # waiting on the upstream, not on the client

    def _lost(self) -> None:
        """The transport lost its connection while it was ours."""
        self._owning = False
        self._close()

    # -- the end

    def _cork(self, on: bool) -> None:
        """
        TCP_CORK while the body goes out: full segments, as nginx's
        C{tcp_nopush}, instead of one per sendfile under twisted.web's
        TCP_NODELAY; uncorking sends what is left at once.
        """
        cork = getattr(socket, "TCP_CORK", None)
        handle = getattr(self._transport, "getHandle", None)
        if cork is None or handle is None:
            return
        try:
            handle().setsockopt(socket.IPPROTO_TCP, cork, 1 if on else 0)
        except OSError:
            pass  # the connection is gone: nothing to send anyway

    def _hand_back(self) -> None:
        """The channel is the transport's producer again."""
        if not self._owning:
            return
        self._owning = False
        self._cork(False)
        transport = self._transport
        if transport.producer is self._writable_producer:
            transport.unregisterProducer()
        if self._channel is not None and not transport.disconnected:
            transport.registerProducer(self._channel, True)

    def _finish(self) -> None:
        self._hand_back()
        self._request.unregisterProducer()
        self._request.finish()
        self._close()

    def _abort(self) -> None:
        self._close()
        abort_response(self._request)

    def _stalled(self) -> None:
        self._stall = None
        self._abort()

    def _arm_stall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.reset(self._stall_timeout)
        elif not self._stopped:
            self._stall = self._reactor.callLater(self._stall_timeout, self._stalled)

    def _disarm_stall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._disarm_stall()
        self._hand_back()
        self._waiting_for_data = False
        self._source.unsubscribe(self)
        self._source.release()
        self.done.callback(self.sent)
