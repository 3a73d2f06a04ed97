"""
Upstream connections that read up to 1 MiB per C{recv}: a blob body
arrives in fewer, larger chunks, each one trip through Twisted's HTTP
client, the body receiver and the download's queue.

Twisted's transports read 64 KiB at a time (C{FileDescriptor.bufferSize}),
so a 256 MiB layer costs 4,096 turns of that path; from a fast upstream the
socket holds far more than 64 KiB at each wake-up.  A read of 1 MiB takes
what is there (C{recv} returns what the socket has, and the bytes object is
shrunk to it), so a small response costs no more than before.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["READ_SIZE", "DirectEndpoints", "with_large_reads"]

READ_SIZE = 1 << 20
"""Bytes one C{recv} may take from an upstream connection."""

P = TypeVar("P", bound=IProtocol)


@implementer(IAgentEndpointFactory)
class DirectEndpoints:
    """
    The endpoints of a direct connection, as L{twisted.web.client.Agent}
    makes them (a host name, and TLS for C{https} with C{tls}'s
    verification), with large reads.
    """

    def __init__(self, reactor: Any, tls: IPolicyForHTTPS, timeout: float) -> None:
        self._reactor = reactor
        self._tls = tls
        self._timeout = timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return with_large_reads(endpoint)


def with_large_reads(endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
    """C{endpoint}, whose connections read up to L{READ_SIZE} per C{recv}."""
    return _LargeReads(endpoint)


@implementer(IStreamClientEndpoint)
class _LargeReads:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connected: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connected.addCallback(_read_large)


def _read_large(protocol: P) -> P:
    """Find the socket under C{protocol}'s transports (TLS, a tunnel) and enlarge its reads."""
    transport = getattr(protocol, "transport", None)
    for _ in range(8):
        if transport is None or isinstance(transport, FileDescriptor):
            break
        transport = getattr(transport, "transport", None)
    if isinstance(transport, FileDescriptor):
        transport.bufferSize = READ_SIZE
    return protocol
