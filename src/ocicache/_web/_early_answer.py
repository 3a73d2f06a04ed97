"""
Answering a connection without the request's resource: a complete
C{Connection: close} response with a distribution-spec error body, written
straight to the transport, and the staged close that keeps it from being
destroyed by a reset (RFC 9112 §9.6).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.http import datetimeToString

from .._spec._errors import RegistryError
from ._responses import SERVER

__all__ = ["LINGER", "LINGER_DISCARD", "Lingering", "early_response"]

_REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def early_response(error: RegistryError, head: bool = False) -> bytes:
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


LINGER = 1.0
"""How long a connection answered early is kept open, reading, after its answer."""
LINGER_DISCARD = 1 << 20
"""The most bytes read (and dropped) from it meanwhile; then it is no longer read."""


class Lingering:
    """
    Closes a connection whose request was answered before all of it was
    read, in stages (RFC 9112 §9.6): closing at once, with unread bytes in
    the receive buffer, sends a TCP reset that can destroy the answer
    before the client reads it.  So: half-close (C{FIN} after the answer),
    drop what still arrives, up to L{LINGER_DISCARD} bytes, and close once
    the client does, or after L{LINGER} seconds.  TLS has no half-close:
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
        self._deadline: IDelayedCall | None = clock.callLater(LINGER, self._expired)

    def drop(self, data: bytes) -> None:
        self._dropped += len(data)
        if self._reading and self._dropped > LINGER_DISCARD:
            self._reading = False
            self._transport.pauseProducing()  # stop reading

    def _expired(self) -> None:
        self._deadline = None
        self._transport.abortConnection()

    def cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
