"""
The main process of C{[server] workers} > 1: it holds the listeners and
keeps the workers running; it serves nothing itself.

Before anything listens it checks the store as one process does (a
crash's temp files go, a corrupt database is rebuilt), since no worker is
running yet to be disturbed by it.  Then it opens every listener (the
registry's, the operator's, the fleet's internal one; systemd's sockets
included) and starts the workers, each C{twistd ocicache} with the same
command line, adopting them (L{ocicache._daemon._handover}).  C{SIGHUP}
goes on to every worker; C{SIGTERM} closes the listeners here and drains
every worker, as one process drains.  docs/design.md#worker-processes has
the model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.tcp import Port
from twisted.logger import ILogObserver, Logger

from .._ops._config import Config
from .._ops._reactor import Reactor
from .._storage._metadata import Metadata, MetadataUnavailable
from .._storage._store import Store
from ._application_log import give_log_observer
from ._handover import open_for_workers, worker_environment
from ._listening import ListenError
from ._stopping import hold_stop_signals
from ._supervisor import Supervisor, WorkerCommand
from ._worker_role import WorkerRole

__all__ = ["MainProcess", "worker_count"]

log = Logger()

TWISTD = "from twisted.scripts.twistd import run; run()"
"""How a worker is started: twistd, as the main process was."""


def worker_count(workers: int | str) -> int:
    """C{[server] workers} as a count: C{"auto"} is one per core this process may run on."""
    if isinstance(workers, int):
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def listeners_of(config: Config) -> tuple[str, ...]:
    """Every listener a worker serves: the registry's, the operator's, the fleet's internal one."""
    listeners = list(config.server.listen)
    if config.metrics.listen is not None:
        listeners.append(config.metrics.listen)
    if config.fleet is not None:
        listeners.append(config.fleet.internal_listen)
    # One descriptor per endpoint string, however often it is named.
    return tuple(dict.fromkeys(listeners))


class MainProcess(Service):
    """
    C{count} workers serving C{config}'s listeners, each started with
    C{twistd_args} (twistd's options, then C{ocicache} and its own).
    """

    def __init__(self, config: Config, reactor: Reactor, count: int, twistd_args: Sequence[str],
                 refuse: Callable[[str], NoReturn]) -> None:
        self._config = config
        self._reactor = reactor
        self._count = count
        self._twistd_args = tuple(twistd_args)
        self._refuse = refuse
        self._listeners = listeners_of(config)
        self._ports: list[Port] = []
        self.supervisor: Supervisor | None = None

    log_observer: ILogObserver | None = None
    """Set by C{makeService} for C{[server] log_format = "json"}, as one process's."""

    def setServiceParent(self, parent: Any) -> None:
        give_log_observer(parent, self.log_observer)
        Service.setServiceParent(self, parent)

    def privilegedStartService(self) -> None:
        # Before binding, as one process: a store that cannot be used binds nothing.
        self._check_store()
        try:
            self._ports = open_for_workers(self._reactor, self._listeners)
        except ListenError as e:
            self._refuse(str(e))
        Service.privilegedStartService(self)

    def _check_store(self) -> None:
        """A crash's leftovers go and the database opens (rebuilt if corrupt), once, before any worker."""
        store = Store(self._config.cache.dir)
        metadata = Metadata(f"{store.root}/metadata.sqlite", self._reactor)
        try:
            removed = store.prepare()
            rebuilt = metadata.open_now(rebuild=True)
        except OSError as e:
            where = f" ({e.filename})" if e.filename and e.filename != store.root else ""
            self._refuse(f"cannot use the cache directory {store.root}: {e.strerror}{where}")
        except MetadataUnavailable as e:
            self._refuse(str(e))
        metadata.close()
        if removed:
            log.info("Removed {count} temp files left by an earlier run", count=removed)
        if rebuilt is not None:
            log.warn("The metadata database {path} was corrupt ({reason}): moved it to {moved_to} and created"
                     " a new one; stored blobs are adopted again, tags are resolved upstream on their next pull",
                     path=metadata.path, reason=rebuilt.reason, moved_to=rebuilt.moved_to)

    def _command(self, index: int) -> WorkerCommand:
        role = WorkerRole(index, self._count, os.getpid(),
                          {listener: offset for offset, listener in enumerate(self._listeners)}, None)
        env = {**worker_environment(os.environ), **role.environment()}
        args = [sys.executable, "-c", TWISTD, *self._twistd_args]
        return WorkerCommand(sys.executable, args, env)

    def startService(self) -> None:
        if not self._ports:
            self.privilegedStartService()
        Service.startService(self)
        self.supervisor = Supervisor(self._reactor, self._count, self._command,
                                     [port.fileno() for port in self._ports])
        self.supervisor.startService()
        self.supervisor.install()
        log.info("ocicache main process {pid}: {count} workers on {listeners}", pid=os.getpid(),
                 count=self._count, listeners=", ".join(self._listeners))

    def stopService(self) -> Deferred[None]:
        """
        The listeners close here first (no new connection is queued), then
        every worker drains and exits.
        """
        Service.stopService(self)
        # A second SIGTERM (systemd's, a group's) is only logged: the workers drain.
        hold_stop_signals(self._reactor)
        for port in self._ports:
            # Closed, not shut down: shutdown(2) would end the listening
            # socket in every worker at once, mid-accept.  Each worker
            # closes its own copy as the first step of its drain (an
            # adopted port is never shut down: Twisted's tcp.Port).
            port._shouldShutdown = False
            port.stopListening()
        self._ports = []
        if self.supervisor is None:
            return succeed(None)
        stopping = self.supervisor.stopService()
        stopping.addCallback(lambda _: log.info("ocicache stopped: every worker has exited"))
        return stopping
