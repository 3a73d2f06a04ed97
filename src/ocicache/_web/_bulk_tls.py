"""
HTTPS with fewer trips between Python and OpenSSL: Twisted's TLS transport,
with each write encrypted in one C{SSL_write} and its records taken out of
the memory BIO in one read.

Twisted's L{TLSMemoryBIOProtocol} hands OpenSSL 16 KiB at a time and reads
the records back after each, and pyOpenSSL turns on
C{SSL_MODE_ENABLE_PARTIAL_WRITE}, so that one C{SSL_write} takes one record:
a 1 MiB blob write costs 64 calls into OpenSSL, 64 reads out of the BIO and
64 slices, each through cffi.  With partial writes off, C{SSL_write} puts
every record of the write into the memory BIO at once (it grows as needed;
OpenSSL still cuts 16 KiB records, RFC 8446 section 5.1), and one read
takes them out: the same bytes on the wire.  The socket's C{SEND_LIMIT}
goes up to match, so that those records reach the kernel in one
C{send(2)} rather than 128 KiB per reactor turn.

Everything else (the handshake, ALPN, shutdown, producers, aborts) is
Twisted's own.  L{BulkTLSReactor} is what C{ssl:} listeners are made with,
so that this is the transport of every HTTPS connection.
"""

from __future__ import annotations

from typing import cast

from OpenSSL import SSL
from OpenSSL._util import lib as _openssl  # pyOpenSSL has no public SSL_clear_mode
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IListeningPort, IOpenSSLContextFactory, IProtocolFactory, IReactorTCP
from twisted.internet.protocol import ServerFactory
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

__all__ = ["BulkTLSFactory", "BulkTLSProtocol", "BulkTLSReactor"]

_BIO_READ = (1 << 20) + (64 << 10)
"""
Bytes asked of the memory BIO at once: a 1 MiB write (the streamers'
largest) and its records' overhead (at most a few hundred bytes per 16 KiB
record), in one read.
"""


class BulkTLSProtocol(BufferingTLSTransport):
    """
    L{BufferingTLSTransport} (small writes are still gathered first) with
    partial writes off: one C{SSL_write} and one BIO read per write.
    """

    def makeConnection(self, transport: object) -> None:
        super().makeConnection(transport)  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        if isinstance(transport, FileDescriptor):
            # The socket takes a write's records in one send(2), not eight:
            # Twisted sends at most SEND_LIMIT (128 KiB) per writable turn.
            transport.SEND_LIMIT = _BIO_READ
        connection = self._tlsConnection
        clear_mode = getattr(_openssl, "SSL_clear_mode", None)
        handle = getattr(connection, "_ssl", None)
        if clear_mode is not None and handle is not None:
            # Still safe if a pyOpenSSL ever lacks either: L{_write} loops
            # over partial writes and flushes once.
            clear_mode(handle, _openssl.SSL_MODE_ENABLE_PARTIAL_WRITE)

    def _write(self, bytes: bytes) -> None:  # noqa: A002 (Twisted's own name)
        if self._lostTLSConnection:
            return
        view = memoryview(bytes)
        sent = 0
        try:
            while sent < len(view):
                sent += self._tlsConnection.send(view[sent:])
        except SSL.WantReadError:
            # OpenSSL asks for the same bytes again once it has read
            # (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets them move).
            self._bufferedWrite(bytes[sent:])  # type: ignore[no-untyped-call]
        except SSL.Error:
            self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]
            return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        records: list[bytes] = []
        while True:
            try:
                records.append(self._tlsConnection.bio_read(_BIO_READ))
            except SSL.WantReadError:
                break
        if records and self.transport is not None:
            self.transport.write(records[0] if len(records) == 1 else b"".join(records))


class BulkTLSFactory(TLSMemoryBIOFactory):
    """A L{TLSMemoryBIOFactory} whose connections are L{BulkTLSProtocol}s."""

    protocol = BulkTLSProtocol


class BulkTLSReactor:
    """
    What an C{ssl:} endpoint listens with: C{listenSSL} as the reactor's
    own (TLS over a TCP port), with L{BulkTLSFactory}.
    """

    def __init__(self, reactor: IReactorTCP) -> None:
        self._reactor = reactor

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: IOpenSSLContextFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        tls = cast(ServerFactory, BulkTLSFactory(contextFactory, False, factory))  # a WrappingFactory is one
        return self._reactor.listenTCP(port, tls, backlog, interface)
