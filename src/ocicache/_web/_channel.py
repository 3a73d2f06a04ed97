"""
The bounded HTTP/1.x connection: the registry's requests are held to the
C{[server]} limits (L{ocicache._web._site} lists them) while their head is
read, before any resource runs, and a stalled client is cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from .._ops._clock import Stopwatch
from .._spec._errors import ErrorCode, RegistryError
from .._spec._host import is_host_field
from ._early_answer import Lingering, early_response
from ._errors import read_only_error

if TYPE_CHECKING:
    from ._site import DrainingSite

__all__ = ["BoundedChannel"]

_BODY_TOO_LARGE = RegistryError(ErrorCode.UNSUPPORTED, "the request body exceeds ocicache's limit", status=413)

_TLS_ON_PLAIN_PORT = RegistryError(
    ErrorCode.UNSUPPORTED, "the client sent a TLS handshake to a plain-HTTP port", status=400)


class BoundedChannel(HTTPChannel):
    """
    An HTTP/1.x connection that tells its L{DrainingSite} when it opens
    and closes, answers C{Connection: close} once the site drains, and
    holds its client to the site's bounds (see L{ocicache._web._site}).

    The head is checked as RFC 9112 asks: exactly one well-formed C{Host}
    (§3.2), else a 400; every 400 carries a distribution-spec error body.

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
    private attribute.  One private method is overridden:
    C{_respondToBadRequestAndDisconnect}, where Twisted writes a bare 400
    for a malformed head (there since Twisted 16; if it were renamed, those
    400s would lose their body, nothing worse).  Twisted's own idle timeout (C{TimeoutMixin}, reset
    by every byte, so no defence against a trickling client) is off: the
    site passes C{timeout=None}.  (Twisted's untyped methods are called on
    Twisted's own classes, C{HTTPChannel.x(self)}, which is what mypy's
    C{untyped_calls_exclude} recognises.)
    """

    site: DrainingSite
    _sniffed = False
    _lingering: Lingering | None = None
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
        self._http_version = b""
        self._head: Stopwatch | None = None
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
        self.site.channel_opened(self)
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
                self.transport.write(early_response(_TLS_ON_PLAIN_PORT))
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
            self.site.channel_closed(self)

    def evict(self) -> None:
        """
        Close this connection, idle longest, to admit a new one at the cap
        (L{ocicache._web._admission}).  Bytes of a finished response still
        buffered are sent first (and a client that does not take them is
        cut after C{stall_timeout}).
        """
        self._closing = True
        self._cancel_reading()
        self.loseConnection()

    # -- the request head

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        limits = self.site.limits
        if self._at_request_line:
            if line:
                self._at_request_line = False
                self._head = Stopwatch()
                self._method, _, rest = line.partition(b" ")
                self._target, _, self._http_version = rest.partition(b" ")
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
            self._head = Stopwatch()
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
            # Only a route that takes a body (git's upload-pack POST) reads
            # one, within its bound; every other request is refused unread.
            self._body_left = self.site.takes_body(self._method, self._target)
            if not self._body_left:
                self._refuse_body()
                return
            if any(int(value) > self._body_left for value in lengths):
                self._answer(_BODY_TOO_LARGE)
                return
        hosts = headers.getRawHeaders(b"host") or []
        # RFC 9112 §3.2: a 400 for an HTTP/1.1 request without Host, and for
        # any request with more than one, or with one that is malformed.
        if len(hosts) > 1 or not all(is_host_field(host) for host in hosts) or (
                not hosts and self._http_version == b"HTTP/1.1"):
            self._answer(RegistryError(ErrorCode.UNSUPPORTED, "the request needs exactly one valid Host header",
                                       status=400))
            return
        self.site.channel_busy(self)
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
            self._answer(_BODY_TOO_LARGE)
            return
        HTTPChannel.rawDataReceived(self, data)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's one answer to a malformed head (a bad request line, a
        # header line without a colon, a bad name or value): a bare 400.
        # Ours carries the spec's error body, as every 400 does.
        if self._closing:
            return
        self._answer(RegistryError(ErrorCode.UNSUPPORTED, "malformed request (RFC 9112)", status=400))

    def requestDone(self, request: Any) -> None:
        # Before Twisted replays pipelined bytes (through dataReceived), so
        # that they start the next head's timeout.
        if self.persistent:
            self._idle = True
            self._set_reading(self.site.limits.idle_timeout)
            self.site.channel_idle(self)
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
        """Answer C{error} now, then close (in stages: see L{Lingering})."""
        self._closing = True
        self._cancel_timers()
        assert self.transport is not None
        data = early_response(error, head=self._method == b"HEAD")
        self.transport.write(data)
        if IPushProducer.providedBy(self.transport):
            # As HTTPChannel.loseConnection does: the transport no longer
            # pauses or resumes this channel.
            IConsumer(self.transport).unregisterProducer()
        self.site.answered_early(self._method, self._target, error.status, len(data),
                                  self._head.elapsed() if self._head is not None else 0.0)
        self._lingering = Lingering(self.transport, self.site.clock)

    # -- timeouts

    def _set_reading(self, seconds: float) -> None:
        self._cancel_reading()
        self._reading = self.site.clock.callLater(seconds, self._read_timed_out)

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
            self._stalled_since = self.site.clock.seconds()
        if self._stall is None:
            self._stall = self.site.clock.callLater(self.site.limits.stall_timeout, self._stall_check)

    def _stall_check(self) -> None:
        """
        Cut a client that has taken no bytes for stall_timeout, so that a
        transfer in progress ends short of its Content-Length.
        """
        self._stall = None
        if self._stalled_since is None:
            return
        left = self._stalled_since + self.site.limits.stall_timeout - self.site.clock.seconds()
        if left > 0:
            self._stall = self.site.clock.callLater(left, self._stall_check)
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
