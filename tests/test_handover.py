"""
Listeners handed from the main process to a worker
(L{ocicache._daemon._handover}), on real sockets: the main process binds
and accepts nothing; a worker adopting the descriptor serves plain HTTP,
and HTTPS with the certificate the C{ssl:} string names; a listener that
cannot be bound fails as one process fails.  (Across real processes:
tests/test_supervisor.py.)
"""

from __future__ import annotations

import os
import socket
import ssl
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ocicache._daemon._handover import adopt, open_for_workers, worker_environment
from ocicache._daemon._listening import ListenError
from ocicache._ops._reactor import the_reactor
from ocitest.ops import PKI, make_pki

pytestmark = pytest.mark.integration


class _Hello(Resource):
    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)

    def render_GET(self, request: Request) -> bytes:
        return b"served by the worker"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str, context: ssl.SSLContext | None = None) -> bytes:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        body: bytes = response.read()
        return body


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest_twisted.ensureDeferred
async def test_the_main_process_binds_but_accepts_nothing_and_a_worker_serves_it() -> None:
    reactor = the_reactor()
    port_number = _free_port()
    [opened] = open_for_workers(reactor, (f"tcp:{port_number}:interface=127.0.0.1",))
    try:
        # Bound and listening, but nobody accepts: a connection waits in
        # the kernel's queue, unanswered.
        waiting = socket.create_connection(("127.0.0.1", port_number), timeout=5)
        waiting.sendall(b"GET / HTTP/1.0\r\n\r\n")
        await deferLater(reactor, 0.3, lambda: None)
        waiting.setblocking(False)
        with pytest.raises(BlockingIOError):
            waiting.recv(1)
        # A worker adopts it (here a duplicate of the descriptor, as a
        # child inherits it) and serves the waiting connection too.
        served = adopt(reactor, f"tcp:{port_number}:interface=127.0.0.1", os.dup(opened.fileno()),
                       Site(_Hello()))
        try:
            assert await deferToThread(_get, f"http://127.0.0.1:{port_number}/") == b"served by the worker"
            waiting.setblocking(True)
            waiting.settimeout(10)
            assert waiting.recv(4096).startswith(b"HTTP/1.0 200")
        finally:
            waiting.close()
            await maybeDeferred(served.stopListening)
    finally:
        await maybeDeferred(opened.stopListening)


@pytest_twisted.ensureDeferred
async def test_an_ssl_listener_is_served_over_tls_with_its_own_certificate(pki: PKI) -> None:
    reactor = the_reactor()
    port_number = _free_port()
    description = f"ssl:{port_number}:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1"
    [opened] = open_for_workers(reactor, (description,))
    try:
        served = adopt(reactor, description, os.dup(opened.fileno()), Site(_Hello()))
        try:
            trusting = ssl.create_default_context(cafile=pki.ca_cert)
            assert await deferToThread(_get, f"https://127.0.0.1:{port_number}/", trusting) == b"served by the worker"
        finally:
            await maybeDeferred(served.stopListening)
    finally:
        await maybeDeferred(opened.stopListening)


def test_a_listener_that_cannot_be_bound_fails_as_one_process_does(tmp_path: Path) -> None:
    reactor = the_reactor()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port_number = taken.getsockname()[1]
        with pytest.raises(ListenError, match=f"cannot listen on 'tcp:{port_number}"):
            open_for_workers(reactor, (f"tcp:{port_number}:interface=127.0.0.1",))
    with pytest.raises(ListenError, match="is not a valid listen endpoint"):
        open_for_workers(reactor, ("carrier-pigeon:5000",))


def test_a_worker_is_not_told_of_the_sockets_systemd_passed_to_the_main_process() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "ocicache", "PATH": "/usr/bin",
               "LISTEN_ADDRESS": "kept: not systemd's"}
    assert worker_environment(environ) == {"PATH": "/usr/bin", "LISTEN_ADDRESS": "kept: not systemd's"}


@pytest_twisted.ensureDeferred
async def test_a_worker_accepts_one_connection_per_wake_up() -> None:
    """
    A burst of connections spreads over the workers: each wake-up of one
    accepts one (Twisted's port would take up to 100 in a row).
    """
    reactor = the_reactor()
    port_number = _free_port()
    [opened] = open_for_workers(reactor, (f"tcp:{port_number}:interface=127.0.0.1",))
    made: list[object] = []

    class Counting(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

    served = adopt(reactor, f"tcp:{port_number}:interface=127.0.0.1", os.dup(opened.fileno()),
                   Factory.forProtocol(Counting))
    # The test wakes it, not the reactor.
    served.stopReading()  # type: ignore[attr-defined]
    clients = [socket.create_connection(("127.0.0.1", port_number), timeout=5) for _ in range(3)]
    try:
        await deferLater(reactor, 0.1, lambda: None)
        for woken in (1, 2, 3):
            served.doRead()  # type: ignore[attr-defined]
            assert len(made) == woken
    finally:
        for client in clients:
            client.close()
        for protocol in made:
            assert isinstance(protocol, Counting) and protocol.transport is not None
            protocol.transport.loseConnection()
        await maybeDeferred(served.stopListening)
        await maybeDeferred(opened.stopListening)
