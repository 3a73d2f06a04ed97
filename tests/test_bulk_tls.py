"""
ocicache's TLS transport encrypts a write 64 KiB per C{SSL_write} and
hands the socket all its records in one write (Twisted's own does both
16 KiB at a time), and a client reads back exactly the bytes written.
"""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.ssl import PrivateCertificate

from ocicache._web._bulk_tls import BulkTLSFactory, BulkTLSProtocol
from ocitest.ops import make_pki


class Wire:
    """The socket's side: every write the TLS transport makes to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def take(self) -> bytes:
        data = b"".join(self.writes)
        self.writes.clear()
        return data


def _pump(client: SSL.Connection, server: BulkTLSProtocol, wire: Wire) -> None:
    """Carry bytes both ways until neither side has any."""
    for _ in range(20):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        moved = False
        try:
            server.dataReceived(client.bio_read(1 << 20))  # type: ignore[no-untyped-call]
            moved = True
        except SSL.WantReadError:
            pass
        data = wire.take()
        if data:
            client.bio_write(data)
            moved = True
        if not moved:
            return


def test_a_big_write_is_one_write_of_records_that_decrypt_to_it(tmp_path: os.PathLike[str]) -> None:
    pki = make_pki(str(tmp_path))
    with open(pki.cert, "rb") as cert, open(pki.key, "rb") as key:
        options = PrivateCertificate.loadPEM(cert.read() + key.read()).options()
    factory = BulkTLSFactory(options, False, ServerFactory.forProtocol(Protocol))
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert isinstance(server, BulkTLSProtocol)
    wire = Wire()
    server.makeConnection(wire)
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    _pump(client, server, wire)

    body = os.urandom(3 << 20)
    for start in range(0, len(body), 1 << 20):
        server.write(body[start:start + (1 << 20)])  # type: ignore[no-untyped-call]
        assert len(wire.writes) == 1  # every record of the write, at once
        records = wire.take()
        assert len(records) > 1 << 20
        client.bio_write(records)
    received = b""
    while len(received) < len(body):
        received += client.recv(1 << 20)
    assert received == body
