"""
The registry's L{Site}, which knows its connections so that the daemon can
stop gracefully, and a quiet Site for the operator listener.

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
  - past C{max_connections} (by default derived from C{RLIMIT_NOFILE}), new
    connections get a C{503} with C{Retry-After} and are closed; those
    already open are served as before.

Only HTTP/1.x is served (the channel is twisted.web's plain
L{HTTPChannel}: ocicache negotiates no HTTP/2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from resource import RLIM_INFINITY, RLIMIT_NOFILE, getrlimit, setrlimit
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IConsumer, IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from .._ops._config import ServerConfig
from .._ops._logging import log_access
from .._ops._metrics import Metrics
from .._spec._errors import RegistryError
from ._resources import SERVER
from ._routing import read_only_error

__all__ = ["DrainingSite", "QuietSite", "default_max_connections", "raise_descriptor_limit"]

log = Logger()


class _Request(Request):
    """A request that remembers when it arrived, for its access event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Request.__init__(self, *args, **kwargs)
        self.received_at = time.monotonic()


_TLS_ON_PLAIN_PORT = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"Client sent a TLS handshake to a plain-HTTP port.\n"
)

# -- descriptors and the connection cap

_RESERVED_DESCRIPTORS = 256
"""
Descriptors kept for everything but client sockets: upstream connections
(16 per upstream host), downloads' temp files, the database, the log, the
listeners, the reactor's own.
"""

_LOW_DESCRIPTOR_LIMIT = 4096
_warned_about_descriptors = False


def _nr_open() -> int:
    """Linux's ceiling for C{RLIMIT_NOFILE} (C{fs.nr_open})."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_descriptor_limit() -> int:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard one (an unprivileged process
    may) and return the soft limit now in effect.
    """
    soft, hard = getrlimit(RLIMIT_NOFILE)
    target = _nr_open() if hard == RLIM_INFINITY else hard
    if soft == RLIM_INFINITY:
        return target
    if soft < target:
        try:
            setrlimit(RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def default_max_connections(limit: int) -> int:
    """
    The default C{[server] max_connections} under a descriptor limit of
    C{limit}: half of what the reserve leaves, since a client reading a
    cached blob holds two descriptors (its socket and the blob's file).
    """
    return max(16, (limit - _RESERVED_DESCRIPTORS) // 2)


def _warn_about_descriptors(limit: int, derived: int, configured: int | None) -> None:
    global _warned_about_descriptors
    if _warned_about_descriptors:
        return
    if configured is not None and configured > derived:
        _warned_about_descriptors = True
        log.warn(
            "server.max_connections = {configured} is more than the descriptor limit (RLIMIT_NOFILE {limit})"
            " leaves room for (about {derived}): past that, accepting connections and opening cache files"
            " fail with EMFILE; raise LimitNOFILE= (systemd) or ulimit -n",
            configured=configured, limit=limit, derived=derived,
        )
    elif configured is None and limit < _LOW_DESCRIPTOR_LIMIT:
        _warned_about_descriptors = True
        log.warn(
            "The descriptor limit (RLIMIT_NOFILE) is only {limit}: at most {derived} client connections at once;"
            " raise LimitNOFILE= (systemd) or ulimit -n to serve more",
            limit=limit, derived=derived,
        )


# -- answering without the request's resource

_REASONS = {
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def _response(error: RegistryError, head: bool = False) -> bytes:
    """
    A complete C{Connection: close} response for C{error}: the
    distribution-spec error body, left out (its length still announced) for
    a C{HEAD} (RFC 9110 §9.3.2).
    """
    body = error.body()
    lines = [
        b"HTTP/1.1 %d %s" % (error.status, _REASONS.get(error.status, b"Error")),
        b"Date: " + datetimeToString(),
        b"Server: " + SERVER,
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    lines += [name + b": " + value for name, value in error.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


_LINGER = 1.0
"""How long a connection answered early is kept open, reading, after its answer."""
_LINGER_DISCARD = 1 << 20
"""The most bytes read (and dropped) from it meanwhile; then it is no longer read."""


class _Lingering:
    """
    Closes a connection whose request was answered before all of it was
    read, in stages (RFC 9112 §9.6): closing at once, with unread bytes in
    the receive buffer, sends a TCP reset that can destroy the answer
    before the client reads it.  So: half-close (C{FIN} after the answer),
    drop what still arrives, up to L{_LINGER_DISCARD} bytes, and close once
    the client does, or after L{_LINGER} seconds.  TLS has no half-close:
    there the connection is closed after the answer.
    """

    def __init__(self, transport: Any, clock: IReactorTime) -> None:
        self._transport = transport
        self._dropped = 0
        self._reading = ITCPTransport.providedBy(transport) and not isinstance(transport, TLSMemoryBIOProtocol)
        if self._reading:
            transport.loseWriteConnection()
        else:
            transport.loseConnection()
        self._deadline: IDelayedCall | None = clock.callLater(_LINGER, self._expired)

    def drop(self, data: bytes) -> None:
        self._dropped += len(data)
        if self._reading and self._dropped > _LINGER_DISCARD:
            self._reading = False
            self._transport.pauseProducing()  # stop reading

    def _expired(self) -> None:
        self._deadline = None
        self._transport.abortConnection()

    def cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class _Refusal(Protocol):
    """
    A connection past C{max_connections}: answered with a C{503} and
    C{Retry-After} at once (RFC 9110 §15.6.4), without reading its request.
    """

    def __init__(self, site: DrainingSite) -> None:
        self._site = site
        self._lingering: _Lingering | None = None

    def connectionMade(self) -> None:
        self._site._refusing += 1
        assert self.transport is not None
        self.transport.write(_response(_OVER_CAPACITY))
        self._lingering = _Lingering(self.transport, self._site._clock)

    def dataReceived(self, data: bytes) -> None:
        if self._lingering is not None:
            self._lingering.drop(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._site._refusing -= 1
        if self._lingering is not None:
            self._lingering.cancel()


class _Drop(Protocol):
    """
    A connection past even the lingering 503s: closed at once.  (Returning
    C{None} from C{buildProtocol} does that for plain TCP, but a TLS
    listener's wrapping factory would wrap the C{None}.)
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]


_RETRY_AFTER = b"5"
_OVER_CAPACITY = RegistryError(
    "TOOMANYREQUESTS", "ocicache is serving as many connections as it may (server.max_connections); retry later",
    status=503, headers=((b"retry-after", _RETRY_AFTER),),
)
_MAX_REFUSING = 64
"""Past this many 503s still lingering, further connections are closed at once."""


class _Channel(HTTPChannel):
    """
    An HTTP/1.x connection that tells its L{DrainingSite} when it opens
    and closes, answers C{Connection: close} once the site drains, and
    holds its client to the site's bounds (see the module docstring).

    A TLS handshake arriving on a plain-HTTP port is answered at once with
    a 400, as Go's servers do, and the connection closed: clients that
    try HTTPS first and then fall back to HTTP (containers/image with
    C{insecure = true}: podman, skopeo, CRI-O) fall back immediately
    instead of waiting out their TLS handshake timeout.

    Twisted internals: twisted.web has no public hook between "the request
    head is parsed" and "its body is read": L{HTTPChannel} chooses a body
    decoder and L{Request.gotLength} spools the body (to memory, or a temp
    file past 100 kB) before any resource runs, and line lengths are only
    bounded by L{LineReceiver}'s silent disconnect.  So this class
    overrides HTTPChannel's per-stage methods (C{lineReceived},
    C{lineLengthExceeded}, C{allHeadersReceived}, C{allContentReceived},
    C{rawDataReceived}, C{requestDone}) and sets C{MAX_LENGTH},
    C{maxHeaders} and C{totalHeadersSize}; it relies on their order within
    C{HTTPChannel.lineReceived} (a header line, then C{allHeadersReceived}
    on the empty line, then C{allContentReceived} or raw mode) and on no
    private attribute.  Twisted's own idle timeout (C{TimeoutMixin}, reset
    by every byte, so no defence against a trickling client) is off: the
    site passes C{timeout=None}.  (Twisted's untyped methods are called on
    Twisted's own classes, C{HTTPChannel.x(self)}, which is what mypy's
    C{untyped_calls_exclude} recognises.)
    """

    site: DrainingSite
    _sniffed = False
    _lingering: _Lingering | None = None
    _closing = False
    """Answered early (or rejected): nothing more is parsed."""
    _body_left = 0
    """Bytes the request body being read may still have (L{DrainingSite.takes_body})."""

    def __init__(self) -> None:
        HTTPChannel.__init__(self)
        self._reading: IDelayedCall | None = None
        """The header timeout, or the idle timeout between requests."""
        self._idle = False
        self._stall: IDelayedCall | None = None
        self._stalled_since: float | None = None
        """When the transport paused this channel (or it began a graceful close)."""
        self._at_request_line = True
        self._method = b""
        self._target = b""
        self._head_started = 0.0
        self._head_bytes = 0
        self._head_fields = 0

    # -- connection life

    def connectionMade(self) -> None:
        limits = self.site.limits
        self.MAX_LENGTH = limits.max_request_line
        # Twisted's own checks answer a bare 400; these are set so that ours
        # (in lineReceived) always come first.
        self.maxHeaders = limits.max_headers
        self.totalHeadersSize = limits.max_request_line + limits.max_header_bytes
        HTTPChannel.connectionMade(self)
        self.site._opened(self)
        self._set_reading(limits.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            if self._lingering is not None:
                self._lingering.drop(data)
            return
        if not self._sniffed and data:
            self._sniffed = True
            # A TLS record of type handshake (22); no HTTP method starts so.
            if data[:1] == b"\x16":
                self._closing = True
                self._cancel_timers()
                assert self.transport is not None
                self.transport.write(_TLS_ON_PLAIN_PORT)
                self.transport.loseConnection()
                return
        if self._idle and data:
            # The next request's first byte: its head is due within
            # header_timeout of now (as Go's ReadHeaderTimeout after IdleTimeout).
            self._idle = False
            self._set_reading(self.site.limits.header_timeout)
        HTTPChannel.dataReceived(self, data)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self.site.draining:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(HTTPChannel.checkPersistence(self, request, version))

    def loseConnection(self) -> None:
        HTTPChannel.loseConnection(self)
        # Graceful closes wait for the write buffer to drain: a client that
        # stops reading now would hold the connection forever.
        self._arm_stall()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_timers()
        if self._lingering is not None:
            self._lingering.cancel()
        try:
            HTTPChannel.connectionLost(self, reason)
        finally:
            self.site._closed(self)

    # -- the request head

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        limits = self.site.limits
        if self._at_request_line:
            if line:
                self._at_request_line = False
                self._head_started = time.monotonic()
                self._method, _, rest = line.partition(b" ")
                self._target = rest.partition(b" ")[0]
                self._head_bytes = self._head_fields = 0
                if len(line) > limits.max_request_line:
                    self._too_long(414)
                    return
                self.MAX_LENGTH = limits.max_header_bytes
        elif line:
            self._head_bytes += len(line)
            if line[:1] not in (b" ", b"\t"):  # not an obs-fold continuation
                self._head_fields += 1
            if self._head_bytes > limits.max_header_bytes or self._head_fields > limits.max_headers:
                self._too_long(431)
                return
            # A partial line longer than what is left cannot fit either.
            self.MAX_LENGTH = limits.max_header_bytes - self._head_bytes
            if _announces_huge_body(line):
                # Twisted would int() it; thousands of digits raise ValueError.
                self._refuse_body()
                return
        HTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._closing:
            return
        if self._at_request_line:
            self._method, _, rest = line.partition(b" ")
            self._target = rest.partition(b" ")[0]
            self._head_started = time.monotonic()
            self._too_long(414)
        else:
            self._too_long(431)

    def allHeadersReceived(self) -> None:
        # The whole head is in: no more header or idle timeout until the
        # response is done.
        self._cancel_reading()
        self._at_request_line = True
        self.MAX_LENGTH = self.site.limits.max_request_line
        headers = self.requests[-1].requestHeaders
        lengths = headers.getRawHeaders(b"content-length") or []
        if headers.hasHeader(b"transfer-encoding") or any(int(value) > 0 for value in lengths):
            self._body_left = self.site.takes_body(self._method, self._target)
            if not self._body_left:
                self._refuse_body()
                return
            if any(int(value) > self._body_left for value in lengths):
                self._answer(RegistryError("UNSUPPORTED", "the request body exceeds ocicache's limit", status=413))
                return
        HTTPChannel.allHeadersReceived(self)

    def allContentReceived(self) -> None:
        if self._closing:
            return
        HTTPChannel.allContentReceived(self)

    def rawDataReceived(self, data: bytes) -> None:
        if self._closing:
            if self._lingering is not None:
                self._lingering.drop(data)
            return
        # A body a route takes (chunked ones too) stays within its bound,
        # framing included.
        self._body_left -= len(data)
        if self._body_left < -(64 << 10):
            self._answer(RegistryError("UNSUPPORTED", "the request body exceeds ocicache's limit", status=413))
            return
        HTTPChannel.rawDataReceived(self, data)

    def requestDone(self, request: Any) -> None:
        # Before Twisted replays pipelined bytes (through dataReceived), so
        # that they start the next head's timeout.
        if self.persistent:
            self._idle = True
            self._set_reading(self.site.limits.idle_timeout)
        HTTPChannel.requestDone(self, request)

    def _refuse_body(self) -> None:
        """
        A request with a body, answered before any of it is read: ocicache
        takes no uploads (distribution-spec: push is optional), and a
        GET/HEAD has no use for one.
        """
        if self._method in (b"GET", b"HEAD"):
            error = RegistryError("UNSUPPORTED", "a GET or HEAD request must not carry a body", status=413)
        else:
            error = read_only_error()
        self._answer(error)

    def _too_long(self, status: int) -> None:
        what = "request line" if status == 414 else "request header fields"
        self._answer(RegistryError("UNSUPPORTED", f"the {what} exceed ocicache's limit", status=status))

    def _answer(self, error: RegistryError) -> None:
        """Answer C{error} now, then close (in stages: see L{_Lingering})."""
        self._closing = True
        self._cancel_timers()
        assert self.transport is not None
        data = _response(error, head=self._method == b"HEAD")
        self.transport.write(data)
        if IPushProducer.providedBy(self.transport):
            # As HTTPChannel.loseConnection does: the transport no longer
            # pauses or resumes this channel.
            IConsumer(self.transport).unregisterProducer()
        self.site._answered_early(self._method, self._target, error.status, len(data),
                                  time.monotonic() - self._head_started)
        self._lingering = _Lingering(self.transport, self.site._clock)

    # -- timeouts

    def _set_reading(self, seconds: float) -> None:
        self._cancel_reading()
        self._reading = self.site._clock.callLater(seconds, self._read_timed_out)

    def _cancel_reading(self) -> None:
        if self._reading is not None:
            if self._reading.active():
                self._reading.cancel()
            self._reading = None

    def _read_timed_out(self) -> None:
        """No complete head in time (slowloris), or idle too long between requests."""
        self._reading = None
        self._closing = True
        self.loseConnection()

    def pauseProducing(self) -> None:
        # The transport's write buffer is full: the client is not reading.
        HTTPChannel.pauseProducing(self)
        self._arm_stall()

    def resumeProducing(self) -> None:
        HTTPChannel.resumeProducing(self)
        # The timer stays: a fast client pauses and resumes many times a
        # second, and _stall_check looks at the time of the latest pause.
        self._stalled_since = None

    def _arm_stall(self) -> None:
        if self.transport is None:
            return
        if self._stalled_since is None:
            self._stalled_since = self.site._clock.seconds()
        if self._stall is None:
            self._stall = self.site._clock.callLater(self.site.limits.stall_timeout, self._stall_check)

    def _stall_check(self) -> None:
        """
        Cut a client that has taken no bytes for stall_timeout, so that a
        transfer in progress ends short of its Content-Length.
        """
        self._stall = None
        if self._stalled_since is None:
            return
        left = self._stalled_since + self.site.limits.stall_timeout - self.site._clock.seconds()
        if left > 0:
            self._stall = self.site._clock.callLater(left, self._stall_check)
            return
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancel_timers(self) -> None:
        self._cancel_reading()
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None


def _announces_huge_body(line: bytes) -> bool:
    name, _, value = line.partition(b":")
    return name.strip().lower() == b"content-length" and len(value.strip()) > 18


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
    (L{ocicache._web._resources}); twisted.web's own combined-log line is not
    written, and the few requests outside C{/v2/} (all answered with a JSON
    404) get their access event and metrics here, under the route
    C{other}.
    """

    protocol = _Channel  # type: ignore[assignment]
    noisy = False

    def __init__(
        self, resource: IResource, reactor: IReactorTime, metrics: Metrics | None = None,
        limits: ServerConfig | None = None,
    ) -> None:
        # timeout=None: Twisted's idle timeout is replaced by the channel's.
        Site.__init__(self, resource, requestFactory=_Request, reactor=reactor, timeout=None)
        self._clock = reactor
        self._metrics = metrics
        self.limits = limits if limits is not None else ServerConfig()
        descriptors = raise_descriptor_limit()
        derived = default_max_connections(descriptors)
        _warn_about_descriptors(descriptors, derived, self.limits.max_connections)
        self.max_connections = self.limits.max_connections or derived
        self._channels: set[_Channel] = set()
        self._refusing = 0
        self._refused = 0
        self._refusal_logged_at: float | None = None
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

    # -- connections

    @property
    def connections(self) -> int:
        return len(self._channels)

    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # type: ignore[override]
        """
        A channel, or past C{max_connections} a L{_Refusal} (503), or past
        that too (a flood of them) a L{_Drop}.
        """
        if len(self._channels) < self.max_connections:
            return Site.buildProtocol(self, addr)  # type: ignore[no-any-return]
        self._refused += 1
        now = self._clock.seconds()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= 60:
            self._refusal_logged_at = now
            log.warn("Connection limit reached ({limit} open, server.max_connections):"
                     " refused {count} new connection(s)", limit=self.max_connections, count=self._refused)
            self._refused = 0
        refusal: Protocol = _Refusal(self) if self._refusing < _MAX_REFUSING else _Drop()
        refusal.factory = self
        return refusal

    def _opened(self, channel: _Channel) -> None:
        self._channels.add(channel)

    def _closed(self, channel: _Channel) -> None:
        self._channels.discard(channel)
        if self.draining and not self._channels:
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
        for channel in list(self._channels):
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
        if not self._channels:
            self._finish_drain()
        else:
            self._deadline = self._clock.callLater(timeout, self._abort_all)
        return self._drained

    def _abort_all(self) -> None:
        self._deadline = None
        remaining = list(self._channels)
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

    def _answered_early(self, method: bytes, target: bytes, status: int, sent: int, duration: float) -> None:
        """The access event and metrics of a request answered by the channel itself."""
        method_text = method.decode("ascii", "replace")[:16]
        target_text = target[:256].decode("ascii", "replace") + ("..." if len(target) > 256 else "")
        if self._metrics is not None:
            self._metrics.request_done("other", method_text, status, duration)
        log_access(method_text, target_text, status, sent, duration)

    def log(self, request: Any) -> None:
        prepath = getattr(request, "prepath", None) or []
        if prepath[:1] in ([b"v2"], [b"token"], [b"git"]):
            return  # the registry (token, git) resource logs and counts it
        method = request.method.decode("ascii", "replace")
        duration = time.monotonic() - getattr(request, "received_at", time.monotonic())
        if self._metrics is not None:
            self._metrics.request_done("other", method, request.code, duration)
        log_access(method, request.uri.decode("ascii", "replace"), request.code,
                   request.sentLength, duration)
