"""
What a worker tells its siblings: its own metrics, so that whichever
worker a scrape reaches answers for the host
(L{ocicache._ops._host_metrics}).

Each worker listens on a private socket in the abstract namespace,
named after the main process and its index (nothing on disk to clean up;
gone with the process).  A connection from another user is closed
unanswered (C{SO_PEERCRED}, unix(7)).  The worker writes its exposition
and closes; a sibling that does not answer within L{ASK_TIMEOUT} (one
restarting) is left out of that scrape.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from .._ops._reactor import Reactor
from ._worker_role import WorkerRole

__all__ = ["ASK_TIMEOUT", "ask_siblings", "serve_siblings"]

ASK_TIMEOUT = 2.0
"""Seconds a scrape waits for a sibling's exposition."""

_MAX_EXPOSITION = 16 << 20
"""A sibling's answer larger than this is not an exposition of ours."""


def _peer_uid(transport: object) -> int | None:
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket):
        return None
    try:
        _, uid, _ = struct.unpack("3i", handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    return int(uid)


class _Tellers(Factory):
    """What the private socket's log lines name."""

    noisy = False

    def logPrefix(self) -> str:
        return "ocicache-siblings"


class _Tell(Protocol):
    def __init__(self, exposition: Callable[[], bytes]) -> None:
        self._exposition = exposition

    def connectionMade(self) -> None:
        assert self.transport is not None
        if _peer_uid(self.transport) == os.getuid():
            self.transport.write(self._exposition())
        self.transport.loseConnection()


def serve_siblings(reactor: Reactor, role: WorkerRole, exposition: Callable[[], bytes]) -> Deferred[IListeningPort]:
    """Answer the siblings with C{exposition()}, on this worker's private socket."""
    factory = _Tellers.forProtocol(lambda: _Tell(exposition))
    listening: Deferred[IListeningPort] = UNIXServerEndpoint(reactor, role.sibling_address(role.index)).listen(factory)
    return listening


class _Hear(Protocol):
    def __init__(self) -> None:
        self.heard: Deferred[bytes | None] = Deferred()
        self._received: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > _MAX_EXPOSITION:
            self._received.clear()
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]  # a TCP or UNIX transport
            return
        self._received.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.heard.called:
            self.heard.callback(b"".join(self._received) if self._size <= _MAX_EXPOSITION else None)


async def _ask(reactor: Reactor, address: str) -> bytes | None:
    hear = _Hear()
    factory = Factory.forProtocol(lambda: hear)
    factory.noisy = False
    try:
        await UNIXClientEndpoint(reactor, address, timeout=ASK_TIMEOUT).connect(factory)
    except Exception:
        return None
    timer = reactor.callLater(ASK_TIMEOUT, hear.heard.cancel)
    try:
        return await hear.heard
    except Exception:
        if hear.transport is not None:
            hear.transport.abortConnection()  # type: ignore[attr-defined]
        return None
    finally:
        if timer.active():
            timer.cancel()


async def ask_siblings(reactor: Reactor, role: WorkerRole) -> list[bytes]:
    """Every other running worker's exposition (those that answered in time)."""
    asking = [Deferred.fromCoroutine(_ask(reactor, role.sibling_address(index)))
              for index in range(role.count) if index != role.index]
    answers = await DeferredList(asking, consumeErrors=True)
    return [answer for ok, answer in answers if ok and answer]
