"""
The client side of a blob response: a L{Streamer} sends a L{Source}'s
bytes to one client, paced by that client's connection.

Each streamer is an L{IPushProducer} registered on its own request, so a
slow client slows nobody else and a client that hangs up stops nothing
but itself.  A L{WriteBudget} caps what all of them may have waiting in
Twisted's buffers at once, so memory stays bounded whatever the number of
clients.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.server import Request
from zope.interface import implementer

from .._fetch._source import Source

__all__ = ["CHUNK", "MIN_CHUNK", "Streamer", "WriteBudget", "abort_response"]

CHUNK = 1 << 20
"""
Bytes per client write for a client that keeps up: large writes keep
twisted.web near memory speed.
"""

MIN_CHUNK = 64 << 10
"""Bytes per write for a slow client."""

SLOW_RATE = 64 << 20
"""
Bytes per second below which a client counts as slow.  A write waits in
Twisted's buffer, in user space, until the client's socket takes it: 1 MiB
per slow client would make memory grow with the number of clients.
"""

_CHUNKS_PER_TURN = 8
"""Writes one streamer makes before yielding the reactor to others."""


class WriteBudget:
    """
    The bytes all streamers may have waiting in Twisted's buffers at once.
    Each streamer's write size is capped at its share: with a few clients
    every write is L{CHUNK}; with many, writes shrink so that memory stays
    bounded whatever the number of clients.
    """

    def __init__(self, total: int = 16 << 20) -> None:
        self.total = total
        self.streams = 0

    @property
    def share(self) -> int:
        return max(MIN_CHUNK, min(CHUNK, self.total // max(self.streams, 1)))


@implementer(IPushProducer)
class Streamer:
    """
    Sends C{[start, end)} of a L{Source} to one client, paced by that
    client's connection.

    C{end} is C{None} when the length is not known in advance: the
    streamer then sends until the source ends.  C{done} fires with the
    number of bytes sent once the response is finished or abandoned.
    """

    def __init__(
        self,
        request: Request,
        source: Source,
        start: int,
        end: int | None,
        reactor: IReactorTime,
        on_bytes: Callable[[int], None] = lambda count: None,
        budget: WriteBudget | None = None,
    ) -> None:
        self._request = request
        self._budget = budget if budget is not None else WriteBudget()
        self._source = source
        self._pos = start
        self._end = end
        self._reactor = reactor
        self._on_bytes = on_bytes
        self._paused = False
        self._stopped = False
        self._waiting = False
        self._scheduled: IDelayedCall | None = None
        self.sent = 0
        self.done: Deferred[int] = Deferred()
        # The write size adapts to how fast this client drains: see
        # resumeProducing.
        self.chunk = CHUNK
        self._burst = 0
        self._paused_at: float | None = None

    def start(self) -> Deferred[int]:
        self._budget.streams += 1
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda f: self.stopProducing())
        self._source.subscribe(self)
        self._pump()
        return self.done

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True
        self._paused_at = self._reactor.seconds()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._paused_at is not None:
            # The bytes written since the last resume drained in this time:
            # a slow client gets smaller writes, a fast one larger again.
            waited = self._reactor.seconds() - self._paused_at
            if waited > 0 and self._burst / waited < SLOW_RATE:
                self.chunk = max(MIN_CHUNK, self.chunk // 2)
            else:
                self.chunk = min(CHUNK, self.chunk * 2)
            self._paused_at = None
        self._burst = 0
        self._schedule()

    def stopProducing(self) -> None:
        """
        The client went away: stop reading, and let the download go on for
        the others and for the cache.
        """
        self._close()

    # the pump

    def _schedule(self) -> None:
        if self._scheduled is None and not self._stopped:
            self._scheduled = self._reactor.callLater(0, self._pump)

    @property
    def position(self) -> int:
        return self._pos

    def data_arrived(self) -> None:
        if self._source.failure is not None:
            # Cut at once, even a paused client: it must not wait for bytes
            # that will never come.
            self._abort()
        elif self._waiting and not self._paused:
            self._waiting = False
            self._schedule()

    def _pump(self) -> None:
        self._scheduled = None
        if self._stopped:
            return
        source = self._source
        for _ in range(_CHUNKS_PER_TURN):
            if self._paused or self._stopped:
                return
            if source.failure is not None:
                self._abort()
                return
            end = self._end if self._end is not None else source.size
            # "available" reaching the end means verified: even an empty
            # body waits for its digest check.
            if end is not None and self._pos >= end and source.available >= end:
                self._finish()
                return
            limit = source.available if end is None else min(end, source.available)
            if self._pos >= limit:
                if source.ended and end is None:
                    self._finish()
                elif source.ended and source.available < (end or 0):
                    self._abort()
                else:
                    self._waiting = True
                return
            data = source.read(self._pos, min(self.chunk, self._budget.share, limit - self._pos))
            if not data:
                # The file is shorter than promised: never pretend otherwise.
                self._abort()
                return
            self._pos += len(data)
            self.sent += len(data)
            self._burst += len(data)
            self._on_bytes(len(data))
            self._request.write(data)
        self._schedule()

    def _finish(self) -> None:
        self._request.unregisterProducer()
        self._request.finish()
        self._close()

    def _abort(self) -> None:
        self._close()
        abort_response(self._request)

    def _close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._budget.streams -= 1
        self._waiting = False
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._source.unsubscribe(self)
        self._source.release()
        self.done.callback(self.sent)


def abort_response(request: Request) -> None:
    """
    Cut a response's connection, so that its client sees a transfer cut
    short of its C{Content-Length} rather than a complete-looking one.
    """
    transport = request.transport
    if transport is None:
        return
    # TCP and TLS transports can abort; ITransport only promises
    # loseConnection, which would first send what is buffered.
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()
