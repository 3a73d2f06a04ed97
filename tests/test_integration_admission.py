"""
Fair admission against the real daemon (issue 19, item 1): under
C{ulimit -n 1024} (a cap of 384 connections), an attacker on 127.0.0.1
keeps 1,100 sockets open, each reopened as soon as it is closed, while a
normal client on 127.0.0.2 makes requests.  The attacker is held to its
share (C{max_connections_per_address}, a quarter of the cap by default),
the normal client is served, and the daemon's descriptors stay bounded.
Bounded in time and count: the attack lasts L{ATTACK_SECONDS}.
"""

from __future__ import annotations

import errno
import http.client
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

import pytest

import ocitest.daemon
from ocitest.daemon import Daemon

pytestmark = pytest.mark.integration

ATTACK_SOCKETS = 1100
ATTACK_SECONDS = 15.0
DESCRIPTOR_LIMIT = 1024


class _Attacker:
    """
    L{ATTACK_SOCKETS} sockets from 127.0.0.1 to C{port}, each reopened as
    soon as the daemon closes it (or refuses it), until stopped.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._selector = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self.opened = 0
        self.closed_by_daemon = 0
        self._thread = threading.Thread(target=self._run, name="attacker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)

    def _open(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        error = sock.connect_ex(("127.0.0.1", self._port))
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            return
        self.opened += 1
        self._selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        try:
            for _ in range(ATTACK_SOCKETS):
                self._open()
            while not self._stopping.is_set():
                for key, _ in self._selector.select(timeout=0.2):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if data:
                        continue  # a 503, read and dropped; the close follows
                    self._selector.unregister(sock)
                    sock.close()
                    self.closed_by_daemon += 1
                    if not self._stopping.is_set():
                        self._open()
        finally:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()


def _get_v2(port: int) -> int | str:
    """One C{GET /v2/} from 127.0.0.2 on a new connection: its status, or what failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError as e:
        return type(e).__name__
    finally:
        conn.close()


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_churning_attacker_on_one_address_does_not_starve_another_client(
    daemon_factory: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch,
) -> None:
    twistd_command = ocitest.daemon.twistd_command

    def limited_command(config_path: str, python: str | None = None) -> list[str]:
        return ["prlimit", f"--nofile={DESCRIPTOR_LIMIT}:{DESCRIPTOR_LIMIT}", "--",
                *twistd_command(config_path, python)]

    monkeypatch.setattr(ocitest.daemon, "twistd_command", limited_command)
    daemon = daemon_factory()
    assert daemon.pid is not None
    attacker = _Attacker(daemon.port)
    attacker.start()
    answers: list[int | str] = []
    most_descriptors = 0
    try:
        # Let the attacker take what it can first.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            most_descriptors = max(most_descriptors, _descriptors(daemon.pid))
            time.sleep(0.2)
        deadline = time.monotonic() + ATTACK_SECONDS
        while time.monotonic() < deadline:
            answers.append(_get_v2(daemon.port))
            most_descriptors = max(most_descriptors, _descriptors(daemon.pid))
            time.sleep(0.1)
    finally:
        attacker.stop()
    served = answers.count(200)
    assert len(answers) >= 20, answers
    assert served >= 0.95 * len(answers), f"{served} of {len(answers)} served: {answers}"
    # The attack was real: the daemon closed the attacker's sockets again and again.
    assert attacker.opened > ATTACK_SOCKETS and attacker.closed_by_daemon > 100, (
        attacker.opened, attacker.closed_by_daemon)
    assert most_descriptors < DESCRIPTOR_LIMIT - 64, most_descriptors
    log = daemon.log_text()
    assert "max_connections_per_address (96)" in log
    assert "Too many open files" not in log and "EMFILE" not in log
    assert "Traceback" not in log
