"""
A main process for the supervisor's tests: it binds a listening socket on
loopback, writes its port to C{argv[1]}, and keeps C{argv[2]} workers
(L{adopting_worker}) serving it under L{ocicache._daemon._supervisor},
as the daemon's main process does: C{SIGHUP} is passed on to every worker,
and C{SIGTERM} stops the supervisor (each worker drains) before it exits.
"""

from __future__ import annotations

import os
import socket
import sys


def main() -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from ocicache._daemon._supervisor import Supervisor, WorkerCommand
    from ocicache._ops._reactor import the_reactor

    reactor = the_reactor()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    port_file, count = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adopting_worker.py")
    supervisor = Supervisor(
        reactor, count, lambda index: WorkerCommand(sys.executable, [sys.executable, worker], dict(os.environ)),
        [sock.fileno()], restart_after=0.2, settle=0.0)
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stopService)

    def started() -> None:
        supervisor.startService()
        supervisor.install()
        with open(port_file + ".tmp", "w") as f:
            f.write(str(sock.getsockname()[1]))
        os.rename(port_file + ".tmp", port_file)

    reactor.callWhenRunning(started)
    reactor.run()


if __name__ == "__main__":
    main()
