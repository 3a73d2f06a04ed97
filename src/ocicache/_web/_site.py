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

Only HTTP/1.x is served (the channel is twisted.web's plain
L{HTTPChannel}: ocicache negotiates no HTTP/2).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from .._ops._logging import log_access
from .._ops._metrics import Metrics

__all__ = ["DrainingSite", "QuietSite"]

log = Logger()


class _Request(Request):
    """A request that remembers when it arrived, for its access event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received_at = time.monotonic()


_TLS_ON_PLAIN_PORT = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"Client sent a TLS handshake to a plain-HTTP port.\n"
)


class _Channel(HTTPChannel):
    """
    An HTTP/1.x connection that tells its L{DrainingSite} when it opens
    and closes, and answers C{Connection: close} once the site drains.

    A TLS handshake arriving on a plain-HTTP port is answered at once with
    a 400, as Go's servers do, and the connection closed: clients that
    try HTTPS first and then fall back to HTTP (containers/image with
    C{insecure = true}: podman, skopeo, CRI-O) fall back immediately
    instead of waiting out their TLS handshake timeout.
    """

    site: DrainingSite
    _sniffed = False
    _rejected = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site._opened(self)

    def dataReceived(self, data: bytes) -> None:
        if not self._sniffed and data:
            self._sniffed = True
            # A TLS record of type handshake (22); no HTTP method starts so.
            if data[:1] == b"\x16":
                self._rejected = True
                assert self.transport is not None
                self.transport.write(_TLS_ON_PLAIN_PORT)
                self.transport.loseConnection()
        if self._rejected:
            return
        super().dataReceived(data)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self.site.draining:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        try:
            super().connectionLost(reason)
        finally:
            self.site._closed(self)


class QuietSite(Site):
    """
    A Site that writes no access line: the operator listener's scrapes and
    probes would drown the log.
    """

    noisy = False

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

    def __init__(self, resource: IResource, reactor: IReactorTime, metrics: Metrics | None = None) -> None:
        super().__init__(resource, requestFactory=_Request, reactor=reactor)
        self._clock = reactor
        self._metrics = metrics
        self._channels: set[_Channel] = set()
        self._drained: Deferred[int] | None = None
        self._deadline: IDelayedCall | None = None
        self._cut = 0
        self.draining = False

    # -- connections

    @property
    def connections(self) -> int:
        return len(self._channels)

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

    def log(self, request: Any) -> None:
        prepath = getattr(request, "prepath", None) or []
        if prepath[:1] == [b"v2"]:
            return  # the registry resource logs and counts it
        method = request.method.decode("ascii", "replace")
        duration = time.monotonic() - getattr(request, "received_at", time.monotonic())
        if self._metrics is not None:
            self._metrics.http_requests.labels(
                "other", method if method in ("GET", "HEAD") else "other", str(request.code)).inc()
            self._metrics.http_duration.labels("other").observe(duration)
        log_access(method, request.uri.decode("ascii", "replace"), request.code,
                   request.sentLength, duration)
