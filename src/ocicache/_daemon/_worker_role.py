"""
What a worker process knows of its place among the others: its index, how
many there are, the listeners it inherited from the main process, and how
it says it is ready.

The main process (L{ocicache._daemon._main_process}) starts each worker as
C{twistd ocicache} with the environment below; a process started without
it is the daemon as one process runs it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
from collections.abc import Mapping

from attrs import frozen

from ._supervisor import FIRST_INHERITED, READY_FD_VARIABLE

__all__ = ["INDEX_VARIABLE", "LISTENERS_VARIABLE", "MAIN_VARIABLE", "WorkerRole"]

INDEX_VARIABLE = "OCICACHE_WORKER"
"""This worker's index, 0 to count - 1, and the count: C{"1/4"}."""

LISTENERS_VARIABLE = "OCICACHE_LISTENERS"
"""The inherited listeners' endpoint strings, in descriptor order from 3, as a JSON list."""

MAIN_VARIABLE = "OCICACHE_MAIN_PID"
"""The main process's id: the siblings' private sockets are named after it."""

_PR_SET_PDEATHSIG = 1
"""prctl(2): the signal this process gets when its parent dies."""


class RoleError(Exception):
    """The worker environment the main process gave is not one it could have given."""


@frozen
class WorkerRole:
    """
    One worker: C{index} of C{count}, serving the listeners in
    C{inherited} (endpoint string -> descriptor).
    """

    index: int
    count: int
    main_pid: int
    inherited: Mapping[str, int]
    ready_fd: int | None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        """The role the main process gave this process, or C{None}: it is not a worker."""
        said = environ.get(INDEX_VARIABLE)
        if said is None:
            return None
        try:
            index_text, count_text = said.split("/")
            index, count = int(index_text), int(count_text)
            main_pid = int(environ[MAIN_VARIABLE])
            listeners = json.loads(environ[LISTENERS_VARIABLE])
            ready = environ.get(READY_FD_VARIABLE)
            ready_fd = int(ready) if ready is not None else None
        except (ValueError, KeyError) as e:
            raise RoleError(f"not a worker environment the main process gives: {e}") from None
        if not (0 <= index < count and isinstance(listeners, list)
                and all(isinstance(listener, str) for listener in listeners)):
            raise RoleError(f"not a worker environment the main process gives: {said!r}")
        inherited = {listener: FIRST_INHERITED + offset for offset, listener in enumerate(listeners)}
        return cls(index, count, main_pid, inherited, ready_fd)

    def environment(self) -> dict[str, str]:
        """The variables that give a process this role (the inverse of L{from_environment})."""
        listeners = sorted(self.inherited, key=lambda listener: self.inherited[listener])
        return {INDEX_VARIABLE: f"{self.index}/{self.count}", MAIN_VARIABLE: str(self.main_pid),
                LISTENERS_VARIABLE: json.dumps(listeners)}

    @property
    def housekeeper(self) -> bool:
        """
        Whether this worker does the store's housekeeping (the janitor, the
        scrub, warming, the pins' tag-following): worker 0 only, so that
        the host does it once.  The supervisor restarts a worker under its
        old index, so there is always one.
        """
        return self.index == 0

    def sibling_address(self, index: int) -> str:
        """
        Worker C{index}'s private socket, in the abstract namespace
        (unix(7)): nothing on disk, gone with the process.
        """
        return f"\0ocicache-{self.main_pid}-worker-{index}"

    def say_ready(self) -> None:
        """Tell the supervisor this worker serves (once)."""
        fd = self.ready_fd
        if fd is None:
            return
        try:
            os.write(fd, b"ready\n")
            os.close(fd)
        except OSError:
            pass
        object.__setattr__(self, "ready_fd", None)


def die_with_parent() -> None:
    """
    Ask the kernel for C{SIGTERM} when the main process dies (Linux's
    prctl(2)), so that no worker outlives it holding the listeners; a
    no-op elsewhere.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
