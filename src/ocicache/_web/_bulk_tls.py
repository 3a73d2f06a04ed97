"""
HTTPS with fewer trips between Python and OpenSSL: Twisted's TLS transport,
with each write encrypted 64 KiB per C{SSL_write} rather than 16 KiB, and
its records sent to the socket at once.

Twisted's L{TLSMemoryBIOProtocol} hands OpenSSL 16 KiB at a time and reads
the records back after each, and pyOpenSSL turns on
C{SSL_MODE_ENABLE_PARTIAL_WRITE}, so that one C{SSL_write} takes one record:
a 1 MiB blob write costs 64 calls into OpenSSL, 64 reads out of the BIO and
64 slices, each through cffi.  With partial writes off, C{SSL_write} puts
every record of its piece into the memory BIO at once (OpenSSL still cuts
16 KiB records, RFC 8446 section 5.1), and one read takes them out: the
same bytes on the wire, in 16 trips per MiB.  The socket's C{SEND_LIMIT}
goes up, so that a write's records reach the kernel in one C{send(2)}
rather than 128 KiB per reactor turn.

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

__all__ = ["SEND_LIMIT", "BulkTLSFactory", "BulkTLSProtocol", "BulkTLSReactor"]

_PIECE = 64 << 10
"""
Bytes encrypted per C{SSL_write}: four records.  Past this, larger pieces
buy nothing (pyOpenSSL alone, 1 MiB written: 16 KiB pieces 0.74-0.80 CPU
s/GiB, 64 KiB 0.55-0.60, 1 MiB 0.53-0.60), and each connection's memory
BIO keeps the capacity of its largest piece for as long as it is open:
64 KiB, against Twisted's 16 KiB, not a megabyte per idle connection.
"""

_BIO_READ = _PIECE + (4 << 10)
"""
Bytes asked of the memory BIO at once: a piece's records and their
overhead (a few dozen bytes per 16 KiB record; L{_records} reads on until
the BIO is empty anyway).
"""

SEND_LIMIT = (1 << 20) + (64 << 10)
"""
What the socket may take in one C{send(2)}: a 1 MiB write's records (the
streamers' largest write), where Twisted sends 128 KiB per writable turn.
"""


class BulkTLSProtocol(BufferingTLSTransport):
    """
    L{BufferingTLSTransport} (small writes are still gathered first) with
    partial writes off: a write is encrypted L{_PIECE} bytes per
    C{SSL_write}, and all its records go to the socket in one write.
    """

    def makeConnection(self, transport: object) -> None:
        super().makeConnection(transport)  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        if isinstance(transport, FileDescriptor):
            transport.SEND_LIMIT = SEND_LIMIT
        connection = self._tlsConnection
        clear_mode = getattr(_openssl, "SSL_clear_mode", None)
        handle = getattr(connection, "_ssl", None)
        if clear_mode is not None and handle is not None:
            # Still correct if a pyOpenSSL ever lacks either: L{_write}
            # loops over partial writes.
            clear_mode(handle, _openssl.SSL_MODE_ENABLE_PARTIAL_WRITE)

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        sent = 0
        records: list[bytes] = []
        try:
            while sent < len(view):
                sent += self._tlsConnection.send(view[sent:sent + _PIECE])
                records += self._records()
        except SSL.WantReadError:
            # OpenSSL asks for the same bytes again once it has read
            # (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets them move).
            self._bufferedWrite(data[sent:])  # type: ignore[no-untyped-call]
        except SSL.Error:
            self._send(records)
            self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]
            return
        self._send(records + self._records())

    def _flushSendBIO(self) -> None:
        self._send(self._records())

    def _records(self) -> list[bytes]:
        """Everything the memory BIO holds for the socket."""
        records: list[bytes] = []
        while True:
            try:
                records.append(self._tlsConnection.bio_read(_BIO_READ))
            except SSL.WantReadError:
                return records

    def _send(self, records: list[bytes]) -> None:
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
