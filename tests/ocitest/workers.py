"""
A daemon's worker processes (C{[server] workers} > 1), seen from outside:
their pids from the main process's log, and a way to choose which worker
a new connection reaches.

The workers share one accept queue, so the kernel picks; stopping every
other worker (C{SIGSTOP}) while a connection is made and its request
answered leaves only the chosen one to accept it.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import wait_for

_READY = re.compile(r"Worker (\d+) \(pid (\d+)\) is ready")


def ready_workers(log_text: Callable[[], str]) -> dict[int, int]:
    """The latest ready pid of each worker index, from the main process's log."""
    pids: dict[int, int] = {}
    for match in _READY.finditer(log_text()):
        pids[int(match.group(1))] = int(match.group(2))
    return {index: pid for index, pid in pids.items() if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_ready(log_text: Callable[[], str], count: int, timeout: float = 30.0) -> dict[int, int]:
    """Wait until C{count} workers are ready; their pids by index."""
    wait_for(lambda: len(ready_workers(log_text)) == count, timeout=timeout, what=f"{count} workers ready")
    return ready_workers(log_text)


@contextmanager
def only(pids: dict[int, int], index: int) -> Iterator[int]:
    """
    While the block runs, every worker but C{index} is stopped: new
    connections reach C{index} (its pid is given to the block).
    """
    others = [pid for other, pid in pids.items() if other != index]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids[index]
    finally:
        for pid in others:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def held_key_locks(cache_dir: str) -> list[str]:
    """The key locks some process holds now: fills in flight, not yet committed and let go."""
    directory = os.path.join(cache_dir, "tmp", "locks")
    held = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        try:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(name)
        finally:
            os.close(fd)
    return held


def wait_settled(cache_dir: str, timeout: float = 20.0) -> None:
    """
    Wait until no fill holds its key's lock.  A worker stopped (L{only})
    while it still commits a fill would hold up whoever follows that fill
    from another worker until it is continued.
    """
    wait_for(lambda: not held_key_locks(cache_dir), timeout=timeout, what="every fill committed and let go")


def served_by(log_text: str, path: str) -> list[int]:
    """The worker of each access event for C{path}, in order (text log: C{w<index>} at the end)."""
    workers = []
    for line in log_text.splitlines():
        if "[ocicache.access#info]" in line and f" {path} " in line:
            match = re.search(r" w(\d+)$", line)
            if match:
                workers.append(int(match.group(1)))
    return workers
