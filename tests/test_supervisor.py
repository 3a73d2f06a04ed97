"""
The supervisor of worker processes (L{ocicache._daemon._supervisor}) and
the listener handover (L{ocicache._daemon._handover}), with real
processes, real signals and a real listening socket: the main process is
C{tests/ocitest/supervising_main.py}, its workers
C{tests/ocitest/adopting_worker.py}.  Every worker serves the one socket
the main process opened (a socket systemd passed too); one killed is
started again on the same socket; C{SIGHUP} to the main process reaches
every worker; C{SIGTERM} lets each worker finish its responses, starts
none again, and the main process exits once they all have.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocicache._daemon._supervisor import Supervisor, WorkerCommand
from ocicache._ops._reactor import the_reactor
from ocitest import free_port, require_binary
from ocitest.adopting_worker import SLOW_BODY
from ocitest.daemon import daemon_root

pytestmark = pytest.mark.integration

MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ocitest", "supervising_main.py")


class Main:
    """The supervising main process, and what can be seen of it from outside."""

    def __init__(self, tmp_path: Path, count: int, listen: str = "tcp:0:interface=127.0.0.1",
                 wrapper: tuple[str, ...] = (), first: Callable[[], object] = lambda: None) -> None:
        self.hup_file = tmp_path / "hup"
        self.log = tmp_path / "main.log"
        port_file = tmp_path / "port"
        env = {**os.environ, "WORKER_HUP_FILE": str(self.hup_file),
               "PYTHONPATH": daemon_root() + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([*wrapper, sys.executable, MAIN, str(port_file), str(count), listen],
                                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        first()
        _until(port_file.exists, self)
        self.port = int(port_file.read_text())
        self.listener = self._sockets_of(self.proc.pid)

    def workers(self) -> list[int]:
        """The main process's children: its workers."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return sorted(int(pid) for pid in children if _alive(int(pid)))

    def serving(self, count: int) -> list[int]:
        """Once C{count} workers hold the listener, said they are ready, and one answers: their pids."""
        def ready() -> bool:
            workers = self.workers()
            return len(workers) == count and all(
                self.listener <= self._sockets_of(pid) and f"(pid {pid}) is ready" in self.said() for pid in workers)
        _until(ready, self)
        assert int(self.get("/pid")) in self.workers()
        return self.workers()

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            body: bytes = response.read()
            return body

    def said(self) -> str:
        return self.log.read_text()

    @staticmethod
    def _sockets_of(pid: int) -> set[str]:
        held = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("socket:"):
                held.add(target)
        return held


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "(zombie)" not in status


def _until(check: Callable[[], object], main: Main | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            said = main.said() if main is not None and main.log.exists() else ""
            raise AssertionError(f"timed out; the main process said:\n{said}")
        time.sleep(0.05)


@pytest.fixture
def main(tmp_path: Path) -> Iterator[Main]:
    started = Main(tmp_path, 2)
    yield started
    if started.proc.poll() is None:
        workers = started.workers()
        started.proc.kill()
        started.proc.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_workers_share_the_listener_and_one_killed_is_started_again(main: Main) -> None:
    first, second = main.serving(2)
    os.kill(first, signal.SIGKILL)
    _until(lambda: first not in main.workers() and len(main.workers()) == 2, main)
    again = main.serving(2)
    assert second in again and first not in again
    assert f"(pid {first}) was killed by SIGKILL" in main.said()


def test_sighup_reaches_every_worker(main: Main) -> None:
    workers = main.serving(2)
    main.proc.send_signal(signal.SIGHUP)
    _until(lambda: main.hup_file.exists() and sorted(int(line) for line in main.hup_file.read_text().split())
           == workers, main)
    # Reloaded, not restarted.
    assert main.workers() == workers


def test_sighup_while_a_worker_starts_reaches_it_once_ready(main: Main) -> None:
    first, second = main.serving(2)
    os.kill(first, signal.SIGKILL)
    _until(lambda: len(main.workers()) == 2 and first not in main.workers(), main)
    # The new worker is starting: the reload waits for it rather than
    # killing it (SIGHUP's default action) or missing it.
    main.proc.send_signal(signal.SIGHUP)
    again = main.serving(2)
    _until(lambda: main.hup_file.exists() and sorted(int(line) for line in main.hup_file.read_text().split())
           == again, main)
    assert "was killed by SIGHUP" not in main.said()


def test_sigterm_drains_every_worker_and_starts_none_again(main: Main) -> None:
    workers = main.serving(2)
    answers: list[bytes | BaseException] = []

    def slow() -> None:
        try:
            answers.append(main.get("/slow"))
        except BaseException as e:
            answers.append(e)

    client = threading.Thread(target=slow)
    client.start()
    time.sleep(0.2)  # the response has begun
    main.proc.send_signal(signal.SIGTERM)
    client.join(30)
    assert main.proc.wait(30) == 0
    # The response in progress was finished, not cut; every worker exited
    # and none was started again.
    assert answers == [SLOW_BODY]
    assert not any(_alive(pid) for pid in workers)
    assert "starting it again" not in main.said()


def test_a_socket_from_systemd_is_served_by_every_worker(tmp_path: Path) -> None:
    activate = require_binary("systemd-socket-activate")
    port = free_port()
    answers: list[bytes] = []

    def first_connection() -> None:
        # systemd-socket-activate starts the main process on the first
        # connection, which waits in the socket's queue meanwhile.
        _until(lambda: "Listening on" in (tmp_path / "main.log").read_text())
        client = threading.Thread(target=lambda: answers.append(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/pid", timeout=30).read()))
        client.start()

    main = Main(tmp_path, 2, "systemd:domain=INET:index=0",
                # It passes a clean environment, less what -E names; Twisted
                # wants LISTEN_FDNAMES, which systemd (227+) always sets.
                wrapper=(activate, "--listen", f"127.0.0.1:{port}", "--fdname=ocicache",
                         "-E", "PYTHONPATH", "-E", "WORKER_HUP_FILE"),
                first=first_connection)
    try:
        assert main.port == port
        workers = main.serving(2)
        _until(lambda: len(answers) == 1, main)
        assert int(answers[0]) in workers
        # The workers were not told of systemd's sockets: they are the main process's.
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(variable.startswith(b"LISTEN_") for variable in environ)
        main.proc.send_signal(signal.SIGTERM)
        assert main.proc.wait(30) == 0
    finally:
        if main.proc.poll() is None:
            main.proc.kill()
            main.proc.wait()


def test_a_supervisor_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        Supervisor(the_reactor(), 0, lambda index: WorkerCommand(sys.executable, [], {}), [])
