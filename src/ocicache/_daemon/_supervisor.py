"""
Worker processes kept running by the main process, which holds the
listening sockets they serve.

Each worker inherits the listeners as descriptors 3, 4, ... (in the order
given) and adopts them (C{IReactorSocket.adoptStreamPort}): one socket,
one kernel accept queue, shared by every worker, so a worker that dies
loses no connection waiting in the queue, and a socket systemd passed by
activation is served as it is.  docs/design.md#worker-processes says why
this rather than C{SO_REUSEPORT}.

A worker says it is ready (its C{SIGHUP} handler installed, its
listeners adopted) by writing C{ready} to the pipe named by
C{$OCICACHE_READY_FD}.  The supervisor restarts a worker that dies
(logged, with a growing delay while it keeps dying young), passes
C{SIGHUP} on to every ready worker (and to one still starting once it is
ready, since it may have read the configuration before the change), and on
stop sends each C{SIGTERM} and waits until all have exited: each drains as
one process does.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._ops._reactor import Reactor

__all__ = ["FIRST_INHERITED", "READY_FD_VARIABLE", "Supervisor", "WorkerCommand"]

log = Logger()

FIRST_INHERITED = 3
"""The descriptor a worker finds its first listener at (after stdin, stdout and stderr)."""

READY_FD_VARIABLE = "OCICACHE_READY_FD"
"""The environment variable naming the descriptor a worker writes C{ready} to."""


@frozen
class WorkerCommand:
    """How to start worker C{index}: the program, its argv, its environment."""

    executable: str
    args: Sequence[str]
    env: Mapping[str, str]


class _Worker(ProcessProtocol):
    """One running worker process: says when it is ready, and when it ended."""

    def __init__(self, index: int, started_at: float, ready_fd: int, on_ready: Callable[[_Worker], None]) -> None:
        self.index = index
        self.started_at = started_at
        self.pid: int | None = None
        """Kept after the process is reaped, for the log line that says so."""
        self.ready = False
        self.reload_missed = False
        """A reload was asked while it started: it gets C{SIGHUP} once ready."""
        self.how = "is running"
        """How it ended, in words, once it has."""
        self.ended: Deferred[None] = Deferred()
        self._ready_fd = ready_fd
        self._on_ready = on_ready
        self._said = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != self._ready_fd or self.ready:
            return
        self._said = (self._said + data)[-16:]
        if b"ready" in self._said:
            self.ready = True
            self._on_ready(self)

    def signal(self, name: str) -> None:
        transport: IProcessTransport | None = self.transport
        if transport is None:
            return
        try:
            transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        self.how = _how(reason)
        self.ended.callback(None)


def _how(reason: Failure) -> str:
    """How a worker ended, in words."""
    ended = reason.value
    if isinstance(ended, ProcessDone):
        return "exited"
    if isinstance(ended, ProcessTerminated):
        if ended.signal is not None:
            try:
                return f"was killed by {signal.Signals(ended.signal).name}"
            except ValueError:
                return f"was killed by signal {ended.signal}"
        return f"exited with status {ended.exitCode}"
    return f"ended ({ended})"


class Supervisor(Service):
    """
    C{count} workers started with C{command(index)}, each inheriting the
    descriptors C{inherited} as L{FIRST_INHERITED} onwards.

    A worker that dies while the supervisor runs is started again after
    C{restart_after} seconds; one that died within C{settle} seconds of
    its start doubles its next delay, up to C{max_restart_after}, so a
    worker that cannot start does not spin.
    """

    def __init__(self, reactor: Reactor, count: int, command: Callable[[int], WorkerCommand],
                 inherited: Sequence[int], *, restart_after: float = 1.0, max_restart_after: float = 30.0,
                 settle: float = 10.0) -> None:
        if count < 1:
            raise ValueError(f"a supervisor needs at least one worker, not {count}")
        self._reactor = reactor
        self._count = count
        self._command = command
        self._inherited = tuple(inherited)
        self._restart_after = restart_after
        self._max_restart_after = max_restart_after
        self._settle = settle
        self._workers: dict[int, _Worker] = {}
        self._delays: dict[int, float] = {}
        self._pending: dict[int, IDelayedCall] = {}
        self._previous_hup: Any = None

    @property
    def pids(self) -> dict[int, int]:
        """The running workers' process ids, by index."""
        return {index: worker.pid for index, worker in self._workers.items() if worker.pid is not None}

    def startService(self) -> None:
        Service.startService(self)
        for index in range(self._count):
            self._start(index)

    def install(self) -> None:
        """Pass C{SIGHUP} on to every worker, until L{stopService}."""
        self._previous_hup = signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        # In the main thread, between two bytecodes: act from the loop.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Every worker reloads its configuration (C{SIGHUP})."""
        log.info("Reloading {count} workers", count=len(self._workers))
        for worker in self._workers.values():
            if worker.ready:
                worker.signal("HUP")
            else:
                worker.reload_missed = True

    def _ready(self, worker: _Worker) -> None:
        log.info("Worker {index} (pid {pid}) is ready", index=worker.index, pid=worker.pid)
        if worker.reload_missed:
            worker.reload_missed = False
            worker.signal("HUP")

    def _start(self, index: int) -> None:
        self._pending.pop(index, None)
        command = self._command(index)
        # Descriptors not named here are closed in the child.
        fds: dict[int, int | str] = {0: 0, 1: 1, 2: 2}
        for offset, fd in enumerate(self._inherited):
            fds[FIRST_INHERITED + offset] = fd
        ready_fd = FIRST_INHERITED + len(self._inherited)
        fds[ready_fd] = "r"
        worker = _Worker(index, self._reactor.seconds(), ready_fd, self._ready)
        env = {**command.env, READY_FD_VARIABLE: str(ready_fd)}
        transport = self._reactor.spawnProcess(worker, command.executable, list(command.args), env, childFDs=fds)
        worker.pid = transport.pid
        self._workers[index] = worker
        log.info("Started worker {index} (pid {pid})", index=index, pid=worker.pid)
        worker.ended.addCallback(self._ended, worker)

    def _ended(self, _: None, worker: _Worker) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        if not self.running:
            log.info("Worker {index} (pid {pid}) {how}", index=worker.index, pid=worker.pid, how=worker.how)
            return
        lived = self._reactor.seconds() - worker.started_at
        delay = self._delays.get(worker.index, self._restart_after)
        if lived >= self._settle:
            delay = self._restart_after
        self._delays[worker.index] = min(delay * 2, self._max_restart_after)
        log.warn("Worker {index} (pid {pid}) {how} after {lived:.1f}s; starting it again in {delay:g}s",
                 index=worker.index, pid=worker.pid, how=worker.how, lived=lived, delay=delay)
        self._pending[worker.index] = self._reactor.callLater(delay, self._start, worker.index)

    def stopService(self) -> Deferred[None]:
        """
        Each worker gets C{SIGTERM} and drains; fires once every one has
        exited.  None is started again.
        """
        Service.stopService(self)
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()
        workers = list(self._workers.values())
        if not workers:
            return succeed(None)
        for worker in workers:
            worker.signal("TERM")
        return DeferredList([worker.ended for worker in workers]).addCallback(lambda _: None)
