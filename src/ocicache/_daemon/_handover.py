"""
Listeners opened by the main process and served by its workers.

The main process opens each listener from its endpoint string as one
process does (C{tcp:}, C{tcp6:}, C{ssl:}, C{unix:}, or a socket systemd
passed, C{systemd:}), then stops accepting on it: its descriptor is what
the workers inherit (L{ocicache._daemon._supervisor}).  A worker adopts
the descriptor it inherits for the same endpoint string, with TLS in
front of it for C{ssl:}: the string is parsed by Twisted's own parser, so
the TLS options are exactly those one process would use.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorSocket, IReactorSSL
from twisted.internet.tcp import Port
from twisted.python.failure import Failure
from zope.interface import implementer

from .._ops._reactor import Reactor
from .._web._bulk_tls import BulkTLSFactory
from ._listening import ListenError, with_backlog

__all__ = ["AdoptedListener", "adopt", "open_for_workers", "worker_environment"]

_SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
"""sd_listen_fds(3): the sockets systemd passed; the main process's, not its children's."""


def _now(listening: Deferred[Any], description: str) -> Any:
    """
    What an endpoint's C{listen} gave: the built-in endpoints listen at
    once (C{defer.execute}), so a result that is not there yet is refused.
    """
    result: list[Any] = []
    listening.addBoth(result.append)
    if not result:
        listening.cancel()
        raise ListenError(f"{description!r} did not listen at once")
    if isinstance(result[0], Failure):
        raise ListenError(f"cannot listen on {description!r}: {result[0].getErrorMessage()}")
    return result[0]


class _NoConnections:
    """The main process's factory: it never accepts, so it never builds a protocol."""

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: Any) -> None:
        return None


def open_for_workers(reactor: Reactor, descriptions: tuple[str, ...]) -> list[Port]:
    """
    Open every listener in the main process, accepting on none (the
    workers do): the ports (TCP, TLS's below its TLS, UNIX and systemd's
    alike), whose C{fileno()} the workers inherit.  Fails with
    L{ListenError} as one process would fail to bind.
    """
    ports: list[Port] = []
    for description in descriptions:
        try:
            endpoint = serverFromString(reactor, with_backlog(description))
        except Exception as e:
            raise ListenError(f"{description!r} is not a valid listen endpoint: {e}") from None
        port: Port = _now(endpoint.listen(_NoConnections()), description)
        # Twisted's ports are file descriptors of the reactor: this one is
        # bound and listening, and the main process's loop leaves it be.
        port.stopReading()
        ports.append(port)
    return ports


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """
    A worker's environment: the main process's, less what systemd said
    about the sockets it passed (they are the main process's, and a
    worker's are its inherited descriptors), as C{sd_listen_fds(3)} does
    with C{unset_environment}.
    """
    return {name: value for name, value in environ.items() if name not in _SYSTEMD_VARIABLES}


@implementer(IReactorSSL)
class _AdoptingTLS:
    """
    What an C{ssl:} endpoint listens with in a worker: its C{listenSSL}
    adopts the inherited descriptor, with TLS in front, instead of binding.
    """

    def __init__(self, reactor: IReactorSocket, fd: int, family: socket.AddressFamily) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listenSSL(self, port: int, factory: IProtocolFactory, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> IListeningPort:
        # As one process serves HTTPS (_listening.listener): ocicache's TLS transport.
        tls = BulkTLSFactory(contextFactory, False, factory)
        return self._reactor.adoptStreamPort(self._fd, self._family, tls)  # type: ignore[arg-type]

    def connectSSL(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a worker's listener only listens")


def adopt(reactor: Reactor, description: str, fd: int, factory: IProtocolFactory) -> IListeningPort:
    """
    Serve the inherited descriptor C{fd}, opened by the main process for
    C{description}, with C{factory}; C{fd} itself is closed (the port
    holds a duplicate).
    """
    # O_NONBLOCK belongs to the open file every process shares; adopting
    # requires it (Twisted does not set it).
    os.set_blocking(fd, False)
    probe = socket.socket(fileno=fd)
    family = socket.AddressFamily(probe.family)
    probe.detach()
    try:
        if description.split(":", 1)[0].lower() == "ssl":
            try:
                endpoint = serverFromString(_AdoptingTLS(reactor, fd, family), with_backlog(description))
            except Exception as e:
                raise ListenError(f"{description!r} is not a valid listen endpoint: {e}") from None
            port: IListeningPort = _now(endpoint.listen(factory), description)
        else:
            port = reactor.adoptStreamPort(fd, family, factory)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    return port


class AdoptedListener(Service):
    """
    A worker's listener: the main process's descriptor C{fd}, opened for
    C{description}, adopted when the service starts (where one process
    binds) and closed when it stops.
    """

    def __init__(self, reactor: Reactor, description: str, fd: int, factory: IProtocolFactory) -> None:
        self._reactor = reactor
        self._description = description
        self._fd = fd
        self._factory = factory
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        if self._port is None:
            self._port = adopt(self._reactor, self._description, self._fd, self._factory)
        Service.privilegedStartService(self)

    def startService(self) -> None:
        if self._port is None:
            self._port = adopt(self._reactor, self._description, self._fd, self._factory)
        Service.startService(self)

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        port, self._port = self._port, None
        if port is None:
            return None
        stopping: Deferred[None] | None = port.stopListening()
        return stopping
