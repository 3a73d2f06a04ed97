"""
The registry's L{Site}, which knows its connections so that the daemon can
stop gracefully, and a quiet Site for the operator listener.

The connection itself is L{ocicache._web._channel.BoundedChannel}; the
descriptor limit and the default cap are L{ocicache._web._descriptors}.

A graceful stop (SIGTERM, C{systemctl stop}) goes:

 1. the registry listeners stop accepting connections (the service does
    that before calling L{DrainingSite.drain});
 2. idle keep-alive connections are closed at once; a connection with a
    request in progress gets C{Connection: close} on a response not yet
    started, and is closed once its response has been written out;
 3. once every connection is gone, or after C{[server] drain_timeout},
    whichever comes first, the connections that remain are aborted: their
    clients see a transfer cut short against its C{Content-Length}, never
    a complete-looking one.

Every connection is bounded (C{[server]} keys, L{ServerConfig}):

  - no request body is ever read: a request that announces one
    (C{Content-Length} above 0, or any C{Transfer-Encoding}) is answered as
    soon as its head is in, C{405} for a push or delete method, C{413} for
    a C{GET} or C{HEAD}, and the connection closed;
  - a request line over C{max_request_line} gets C{414} (RFC 9110
    §15.5.15), header fields over C{max_header_bytes} or C{max_headers}
    get C{431} (RFC 6585 §5); each with a distribution-spec error body;
  - the request head must arrive within C{header_timeout} of the connection
    (or of its first byte, on a keep-alive connection), an idle keep-alive
    connection is closed after C{idle_timeout}, and a client that takes no
    response bytes for C{stall_timeout} is cut;
  - one source address holds at most C{max_connections_per_address}
    connections; at C{max_connections} (by default derived from
    C{RLIMIT_NOFILE}) the connection idle longest is closed to admit a new
    one (L{ocicache._web._admission}); a connection refused gets a C{503}
    with C{Retry-After} and is closed; those open are served as before.

Only HTTP/1.x is served (the channel is twisted.web's plain
L{HTTPChannel}: ocicache negotiates no HTTP/2).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from .._ops._clock import Stopwatch
from .._ops._config import ServerConfig
from .._ops._logging import log_access
from .._ops._metrics import Metrics
from .._spec._errors import RegistryError
from ._admission import Admission, Refused
from ._channel import BoundedChannel
from ._descriptors import default_max_connections, raise_descriptor_limit, warn_about_descriptors
from ._early_answer import Lingering, early_response

__all__ = ["DrainingSite", "QuietSite", "default_max_connections", "raise_descriptor_limit"]

log = Logger()


class _Request(Request):
    """A request that remembers when it arrived, for its access event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Request.__init__(self, *args, **kwargs)
        self.received = Stopwatch()


class _Refusal(Protocol):
    """
    A connection refused (L{ocicache._web._admission}): answered with a C{503} and
    C{Retry-After} at once (RFC 9110 §15.6.4), without reading its request.
    """

    def __init__(self, site: DrainingSite, error: RegistryError) -> None:
        self._site = site
        self._error = error
        self._lingering: Lingering | None = None

    def connectionMade(self) -> None:
        self._site.refusing += 1
        assert self.transport is not None
        self.transport.write(early_response(self._error))
        self._lingering = Lingering(self.transport, self._site.clock)

    def dataReceived(self, data: bytes) -> None:
        if self._lingering is not None:
            self._lingering.drop(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._site.refusing -= 1
        if self._lingering is not None:
            self._lingering.cancel()


class _Drop(Protocol):
    """
    A connection past even the lingering 503s: closed at once.  (Returning
    C{None} from C{buildProtocol} does that for plain TCP, but a TLS
    listener's wrapping factory would wrap the C{None}.)
    """

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if type(transport) is tcp.Server:
            # Plain TCP: the descriptor goes back now, not on the reactor's
            # next turn; a flood accepted hundreds at a time (Twisted's
            # accept loop grows with the traffic) would otherwise hold them
            # all at once.
            transport.connectionLost(Failure(ConnectionAborted()))
        else:
            transport.abortConnection()  # type: ignore[attr-defined]


_RETRY_AFTER = b"5"
_REFUSALS = {
    Refused.CAP: RegistryError(
        "TOOMANYREQUESTS", "ocicache is serving as many connections as it may (server.max_connections);"
        " retry later", status=503, headers=((b"retry-after", _RETRY_AFTER),),
    ),
    Refused.ADDRESS: RegistryError(
        "TOOMANYREQUESTS", "ocicache is serving as many connections from this address as it may"
        " (server.max_connections_per_address); retry later", status=503, headers=((b"retry-after", _RETRY_AFTER),),
    ),
}
_MAX_REFUSING = 64
"""Past this many 503s still lingering, further connections are closed at once."""


def _host_of(address: IAddress | None) -> str | None:
    """The source address a connection is counted under; C{None} for a UNIX socket."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


class QuietSite(Site):
    """
    A Site that writes no access line: the operator listener's scrapes and
    probes would drown the log.
    """

    noisy = False

    def __init__(self, resource: IResource) -> None:
        Site.__init__(self, resource)

    def log(self, request: Any) -> None:
        pass


class DrainingSite(Site):
    """
    The registry's Site.

    Requests under C{/v2/} emit their access event and metrics themselves
    (L{ocicache._oci._resources}); twisted.web's own combined-log line is not
    written, and the few requests outside C{/v2/} (all answered with a JSON
    404) get their access event and metrics here, under the route
    C{other}.
    """

    protocol = BoundedChannel  # type: ignore[assignment]
    noisy = False

    def __init__(
        self, resource: IResource, reactor: IReactorTime, metrics: Metrics | None = None,
        limits: ServerConfig | None = None,
    ) -> None:
        # timeout=None: Twisted's idle timeout is replaced by the channel's.
        Site.__init__(self, resource, requestFactory=_Request, reactor=reactor, timeout=None)
        self.clock = reactor
        self._metrics = metrics
        self.limits = limits if limits is not None else ServerConfig()
        descriptors = raise_descriptor_limit()
        derived = default_max_connections(descriptors)
        warn_about_descriptors(descriptors, derived, self.limits.max_connections)
        self.max_connections = self.limits.max_connections or derived
        per_address = self.limits.max_connections_per_address
        self.admission: Admission[BoundedChannel] = Admission(
            self.max_connections, max(1, self.max_connections // 4) if per_address is None else per_address)
        self.refusing = 0
        self._refused: Counter[Refused] = Counter()
        self._refusal_logged_at: dict[Refused, float] = {}
        self._drained: Deferred[int] | None = None
        self._deadline: IDelayedCall | None = None
        self._cut = 0
        self.draining = False
        self.takes_body: Callable[[bytes, bytes], int] = lambda method, target: 0
        """
        The bound on the body of a request (method, target), 0: none
        allowed.  Set by the service for the routes that take one (git's
        upload-pack POST).
        """
        self.on_channel_closed: Callable[[], None] = lambda: None
        """Called as each client connection ends (the daemon's memory return counts them)."""

    # -- connections

    @property
    def connections(self) -> int:
        return len(self.admission)

    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # type: ignore[override]
        """
        A channel, once admitted (L{ocicache._web._admission}: the
        connection idle longest may be closed to make room); else a
        L{_Refusal} (503), or past many of those (a flood) a L{_Drop}.
        """
        decision = self.admission.decide(_host_of(addr))
        if not isinstance(decision, Refused):
            if decision is not None:
                decision.evict()
            return Site.buildProtocol(self, addr)  # type: ignore[no-any-return]
        self._log_refusal(decision, _host_of(addr))
        refusal: Protocol = _Refusal(self, _REFUSALS[decision]) if self.refusing < _MAX_REFUSING else _Drop()
        refusal.factory = self
        return refusal

    def _log_refusal(self, why: Refused, address: str | None) -> None:
        """At most one warning a minute for each reason, with the count refused since the last."""
        self._refused[why] += 1
        now = self.clock.seconds()
        logged = self._refusal_logged_at.get(why)
        if logged is not None and now - logged < 60:
            return
        self._refusal_logged_at[why] = now
        count, self._refused[why] = self._refused[why], 0
        if why is Refused.CAP:
            log.warn("Connection limit reached ({limit} open, server.max_connections, none idle):"
                     " refused {count} new connection(s)", limit=self.max_connections, count=count)
        else:
            log.warn("Connections from one address past server.max_connections_per_address ({limit}),"
                     " {address} the latest: refused {count} new connection(s)",
                     limit=self.admission.per_address, address=address, count=count)

    def channel_opened(self, channel: BoundedChannel) -> None:
        assert channel.transport is not None
        self.admission.opened(channel, _host_of(channel.transport.getPeer()))

    def channel_busy(self, channel: BoundedChannel) -> None:
        self.admission.busy(channel)

    def channel_idle(self, channel: BoundedChannel) -> None:
        self.admission.idle(channel)

    def channel_closed(self, channel: BoundedChannel) -> None:
        self.admission.closed(channel)
        self.on_channel_closed()
        if self.draining and not len(self.admission):
            self._finish_drain()

    def drain(self, timeout: float) -> Deferred[int]:
        """
        Let the responses in progress finish, for up to C{timeout}
        seconds, then cut what remains.  Fires with the number of
        connections cut once none is left.  Stop the listening ports
        first, or new connections keep the drain waiting.
        """
        if self._drained is not None:
            return self._drained
        self.draining = True
        self._drained = Deferred()
        busy = 0
        for channel in self.admission.connections:
            if not channel.requests:
                channel.loseConnection()
                continue
            busy += 1
            channel.persistent = False
            for request in channel.requests:
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        if busy:
            log.info("Draining {count} connection(s) with requests in progress, for up to {timeout}s",
                     count=busy, timeout=timeout)
        if not len(self.admission):
            self._finish_drain()
        else:
            self._deadline = self.clock.callLater(timeout, self._abort_all)
        return self._drained

    def _abort_all(self) -> None:
        self._deadline = None
        remaining = self.admission.connections
        self._cut = len(remaining)
        log.warn("Drain timeout: cutting {count} connection(s) still open", count=len(remaining))
        for channel in remaining:
            transport = channel.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]

    def _finish_drain(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        drained, self._drained = self._drained, None
        if drained is not None:
            # Keep answering later calls with the same result.
            self._drained = succeed(self._cut)
            drained.callback(self._cut)

    # -- logging

    def answered_early(self, method: bytes, target: bytes, status: int, sent: int, duration: float) -> None:
        """The access event and metrics of a request answered by the channel itself."""
        method_text = method.decode("ascii", "replace")[:16]
        target_text = target[:256].decode("ascii", "replace") + ("..." if len(target) > 256 else "")
        if self._metrics is not None:
            self._metrics.request_done("other", method_text, status, duration)
        log_access(method_text, target_text, status, sent, duration)

    def log(self, request: Any) -> None:
        prepath = getattr(request, "prepath", None) or []
        if prepath[:1] in ([b"v2"], [b"token"], [b"git"], [b"files"]):
            return  # the registry (token, git) resource logs and counts it
        method = request.method.decode("ascii", "replace")
        received = getattr(request, "received", None)
        duration = received.elapsed() if isinstance(received, Stopwatch) else 0.0
        if self._metrics is not None:
            self._metrics.request_done("other", method, request.code, duration)
        log_access(method, request.uri.decode("ascii", "replace"), request.code,
                   request.sentLength, duration)
