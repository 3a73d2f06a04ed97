"""
A main process for the supervisor's tests, as the daemon's main process
works: it opens the listener C{argv[3]} (an endpoint string: C{tcp:0:...},
or C{systemd:...} under C{systemd-socket-activate}) with
L{ocicache._daemon._handover}, writes its port to C{argv[1]}, and keeps
C{argv[2]} workers (L{adopting_worker}) serving it under
L{ocicache._daemon._supervisor}: C{SIGHUP} is passed on to every worker,
and C{SIGTERM} stops the supervisor (each worker drains) before it exits.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from ocicache._daemon._handover import open_for_workers, worker_environment
    from ocicache._daemon._supervisor import Supervisor, WorkerCommand
    from ocicache._ops._reactor import the_reactor

    reactor = the_reactor()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    port_file, count, description = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    [port] = open_for_workers(reactor, (description,))
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adopting_worker.py")
    env = {**worker_environment(os.environ), "WORKER_LISTEN": description}
    supervisor = Supervisor(
        reactor, count, lambda index: WorkerCommand(sys.executable, [sys.executable, worker], env),
        [port.fileno()], restart_after=0.2, settle=0.0)
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stopService)

    def started() -> None:
        supervisor.startService()
        supervisor.install()
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port.getHost().port))
        os.rename(port_file + ".tmp", port_file)

    reactor.callWhenRunning(started)
    reactor.run()


if __name__ == "__main__":
    main()
