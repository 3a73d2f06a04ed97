"""
Upstream response bodies, received with an idle timeout: a 2 GiB layer may
take as long as it needs, but no body may stall forever without a byte.

L{BodyReceiver} is the one protocol every upstream body goes through;
L{read_body} collects a small one (manifests, tag lists, tokens) up to a
limit, and L{discard_body} drains one so its connection can be reused.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from ._errors import Unavailability, UpstreamUnavailable, describe

__all__ = ["BodyReceiver", "discard_body", "read_body", "stop_body"]


class BodyReceiver(Protocol):
    """
    Receives one response body, failing it after C{idle} silent seconds.
    Subclasses implement L{received}, L{ended} and L{failed}.
    """

    def __init__(self, clock: IReactorTime, idle: float) -> None:
        self._clock = clock
        self._idle = idle
        self._timer: IDelayedCall | None = None

    @property
    def producer(self) -> IPushProducer | None:
        """The upstream transport, to pause while a consumer falls behind."""
        transport = self.transport
        return transport if IPushProducer.providedBy(transport) else None

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._idle, self._timed_out)
        self.started()

    def dataReceived(self, data: bytes) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)
        self.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        # PotentialDataLoss: a body without a length ended by closing; the
        # caller's length or digest check decides whether it is whole.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.ended()
        else:
            self.failed(Failure(UpstreamUnavailable(f"upstream body failed: {describe(reason)}")))

    def stop(self) -> None:
        """Stop the transfer: the rest of the body is not wanted."""
        self._cancel_timer()
        producer = self.producer
        if producer is not None:
            producer.stopProducing()

    def _timed_out(self) -> None:
        self._timer = None
        self.failed(Failure(UpstreamUnavailable(f"upstream body stalled: no data for {self._idle:g}s",
                                                Unavailability.TIMEOUT)))
        self.stop()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- for subclasses

    def started(self) -> None:
        """The body starts; L{producer} is set."""

    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def ended(self) -> None:
        raise NotImplementedError

    def failed(self, reason: Failure) -> None:
        raise NotImplementedError


class _Collector(BodyReceiver):
    """Collects a body up to C{limit} bytes; past that, stops the transfer."""

    def __init__(self, clock: IReactorTime, idle: float, limit: int, keep: bool) -> None:
        super().__init__(clock, idle)
        self.done: Deferred[bytes | None] = Deferred()
        self._limit = limit
        self._keep = keep
        self._parts: list[bytes] = []
        self._size = 0

    def received(self, data: bytes) -> None:
        if not self._keep or self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.done.callback(None)
            self.stop()
            return
        self._parts.append(data)

    def ended(self) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self._parts))

    def failed(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


async def read_body(response: IResponse, limit: int, clock: IReactorTime, idle: float) -> bytes | None:
    """
    A small body, whole: C{None} if it is over C{limit} bytes.  Raises
    L{UpstreamUnavailable} when it fails or stalls for C{idle} seconds.
    """
    collector = _Collector(clock, idle, limit, keep=True)
    response.deliverBody(collector)
    return await collector.done


async def discard_body(response: IResponse, clock: IReactorTime, idle: float) -> None:
    """
    Read a body to its end and keep nothing, so that its connection goes
    back to the pool; a failure here only loses that connection.
    """
    collector = _Collector(clock, idle, 0, keep=False)
    response.deliverBody(collector)
    try:
        await collector.done
    except UpstreamUnavailable:
        pass


def stop_body(response: IResponse) -> None:
    """
    Stop a body nobody will read, closing its connection rather than
    reading a blob-sized body to its end.
    """
    response.deliverBody(_Stop())


class _Stop(Protocol):
    def connectionMade(self) -> None:
        transport = self.transport
        if IPushProducer.providedBy(transport):
            transport.stopProducing()
