"""
The supervisor's decisions on a fake clock (L{ocicache._daemon._supervisor}):
the descriptors a worker gets, the delay before a dead worker is started
again, a reload asked while a worker starts, a stop that starts nothing.
tests/test_supervisor.py runs it with real processes and signals.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ocicache._daemon._supervisor import READY_FD_VARIABLE, Supervisor, WorkerCommand
from ocicache._ops._reactor import Reactor as OcicacheReactor
from ocitest.fakes import Reactor, run


class _Process:
    """A spawned process's transport: its pid, and the signals it was sent."""

    def __init__(self, pid: int, protocol: ProcessProtocol, env: dict[str, str], fds: dict[int, Any]) -> None:
        self.pid: int | None = pid
        self.protocol = protocol
        self.env = env
        self.fds = fds
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def says_ready(self) -> None:
        self.protocol.childDataReceived(int(self.env[READY_FD_VARIABLE]), b"rea")
        self.protocol.childDataReceived(int(self.env[READY_FD_VARIABLE]), b"dy\n")

    def dies(self, reason: BaseException) -> None:
        self.protocol.processEnded(Failure(reason))


class _Spawning(Reactor):
    def __init__(self) -> None:
        Reactor.__init__(self)
        self.spawned: list[_Process] = []

    def spawnProcess(self, processProtocol: ProcessProtocol, executable: Any, args: Any = (), env: Any = None,
                     path: Any = None, uid: Any = None, gid: Any = None, usePTY: Any = False,
                     childFDs: Any = None) -> _Process:
        process = _Process(1000 + len(self.spawned), processProtocol, env, childFDs)
        self.spawned.append(process)
        processProtocol.makeConnection(process)
        return process


def _supervisor(reactor: _Spawning, count: int = 1) -> Supervisor:
    # The fake has the parts of the reactor the supervisor uses.
    return Supervisor(cast(OcicacheReactor, reactor), count,
                      lambda index: WorkerCommand("/bin/worker", ["worker", str(index)], {"A": "b"}), [7, 9],
                      restart_after=1.0, max_restart_after=4.0, settle=10.0)


def test_a_worker_gets_the_listeners_from_descriptor_3_and_a_ready_pipe_after_them() -> None:
    reactor = _Spawning()
    _supervisor(reactor, count=2).startService()
    assert len(reactor.spawned) == 2
    for process in reactor.spawned:
        assert process.fds == {0: 0, 1: 1, 2: 2, 3: 7, 4: 9, 5: "r"}
        assert process.env == {"A": "b", READY_FD_VARIABLE: "5"}


def test_a_worker_dying_young_waits_longer_each_time_up_to_the_cap() -> None:
    reactor = _Spawning()
    supervisor = _supervisor(reactor)
    supervisor.startService()
    delays = []
    for _ in range(4):
        reactor.spawned[-1].dies(ProcessTerminated(signal=9))
        count = len(reactor.spawned)
        waited = 0.0
        while len(reactor.spawned) == count:
            reactor.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert supervisor.pids == {0: reactor.spawned[-1].pid}
    # One that ran past settle is started again after the first delay.
    reactor.advance(10.0)
    reactor.spawned[-1].dies(ProcessDone(0))
    reactor.advance(0.99)
    assert len(reactor.spawned) == 5
    reactor.advance(0.01)
    assert len(reactor.spawned) == 6


def test_a_reload_reaches_a_starting_worker_once_it_is_ready() -> None:
    reactor = _Spawning()
    supervisor = _supervisor(reactor, count=2)
    supervisor.startService()
    first, second = reactor.spawned
    first.says_ready()
    supervisor.reload()
    assert (first.signals, second.signals) == (["HUP"], [])
    second.says_ready()
    assert second.signals == ["HUP"]
    second.says_ready()
    assert second.signals == ["HUP"]


def test_a_stop_signals_every_worker_waits_for_them_and_starts_none() -> None:
    reactor = _Spawning()
    supervisor = _supervisor(reactor, count=2)
    supervisor.startService()
    first, second = reactor.spawned
    first.dies(ProcessTerminated(signal=9))  # a restart is pending
    stopped = supervisor.stopService()
    assert second.signals == ["TERM"] and first.signals == []
    assert not stopped.called
    second.dies(ProcessTerminated(signal=15))
    assert stopped.called
    reactor.advance(60)
    run(reactor)
    assert len(reactor.spawned) == 2
    assert supervisor.pids == {}
