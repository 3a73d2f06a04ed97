"""
A server as the processes it runs: one for distribution and for ocicache
with one worker, a master and its workers for nginx, a main process (the
supervisor holding the listeners) and its worker processes for ocicache
with C{[server] workers} above 1.  Everything here reads C{/proc}:

  - L{tree_cpu_seconds}: CPU time of the whole tree, workers that have
    exited and been reaped included (the bench's CPU s/GiB)
  - L{rss_mib}, L{RssSampler}: resident memory of the whole tree
  - L{wait_workers_ready}: the worker processes of an ocicache main
    process, once every one has said it is ready
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "RssSampler",
    "children",
    "cpu_seconds",
    "process_start",
    "rss_mib",
    "tree_cpu_seconds",
    "tree_pids",
    "wait_workers_ready",
]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """
    The fields of C{/proc/PID/stat} after the command name, the state
    (field 3) first, so field N of proc(5) is at index N - 3.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time of process C{pid}, all its threads, so far.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # utime and stime: fields 14 and 15 of proc(5).
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_start(pid: int) -> int | None:
    """
    When process C{pid} started, in clock ticks since boot (field 22 of
    proc(5)), or C{None} if there is none: with the pid, it names one
    process, never a later one given the same pid.
    """
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _reaped_children_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # cutime and cstime (fields 16 and 17): children it has waited for, and theirs.
    return (int(fields[13]) + int(fields[14])) / _TICK


def children(pid: int) -> list[int]:
    """
    The child processes of C{pid} now (every thread's children).
    """
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
        except (OSError, ValueError):
            continue
    return kids


def tree_pids(pid: int) -> list[int]:
    """
    C{pid} and every process below it now.
    """
    return [pid, *(p for kid in children(pid) for p in tree_pids(kid))]


def tree_cpu_seconds(pid: int) -> float:
    """
    L{cpu_seconds} of C{pid} and every process below it, plus what the
    exited ones used: a child's time moves into its parent's C{cutime}
    when it is reaped, so a worker that died (and was restarted) between
    two readings is still counted once.
    """
    return sum(cpu_seconds(p) + _reaped_children_seconds(p) for p in tree_pids(pid))


def _status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tree_kib(pid: int, field_name: str) -> int:
    return sum(_status_kib(p, field_name) or 0 for p in tree_pids(pid))


def rss_mib(pid: int) -> float:
    """
    The resident set size of C{pid} and every process below it now, in
    MiB (0 if it is gone).
    """
    return round(_tree_kib(pid, "VmRSS") / 1024, 1)


class RssSampler:
    """
    The peak resident set size of a server during a phase, all its
    processes together: the kernel's high-water mark of each (C{VmHWM},
    reset at the start through C{clear_refs} where allowed), summed, and,
    in case that reset is refused, the sum of their C{VmRSS} sampled every
    C{interval} seconds.  For one process that is its own peak; for
    several, the sum of their peaks bounds the peak of their sum from
    above.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline_kib = 0
        self.max_sampled_kib = 0
        self.hwm_kib = 0
        self.end_kib = 0
        self.hwm_reset = False
        self.samples = 0
        self.processes = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        pids = tree_pids(self.pid)
        self.processes = len(pids)
        try:
            for pid in pids:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")  # reset the peak RSS to the current RSS (Linux >= 4.0)
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.baseline_kib = _tree_kib(self.pid, "VmRSS")
        self.max_sampled_kib = self.baseline_kib
        self._thread = threading.Thread(target=self._run, name=f"rss:{self.pid}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _tree_kib(self.pid, "VmRSS")
            if rss:
                self.samples += 1
                self.max_sampled_kib = max(self.max_sampled_kib, rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.hwm_kib = _tree_kib(self.pid, "VmHWM")
        self.end_kib = _tree_kib(self.pid, "VmRSS")

    @property
    def peak_kib(self) -> int:
        if self.hwm_reset:
            return max(self.hwm_kib, self.max_sampled_kib)
        return self.max_sampled_kib

    def result(self) -> dict[str, Any]:
        return {
            "baseline_mib": round(self.baseline_kib / 1024, 1),
            "peak_mib": round(self.peak_kib / 1024, 1),
            "end_mib": round(self.end_kib / 1024, 1),
            "hwm_reset": self.hwm_reset,
            "samples": self.samples,
            "processes": self.processes,
        }


_READY = re.compile(r"Worker \d+ \(pid (\d+)\) is ready")
"""The supervisor's line once a worker serves (C{ocicache._daemon._supervisor})."""


def wait_workers_ready(pid: int, log_text: Callable[[], str], timeout: float,
                       alive: Callable[[], bool]) -> list[int]:
    """
    The worker processes of the ocicache main process C{pid}, once there
    is at least one and the log (C{log_text}) says each is ready: before
    that, the shared socket would queue connections for a worker still
    starting, and the first measurement would time a start-up.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise RuntimeError(f"ocicache (pid {pid}) exited while its workers started")
        workers = sorted(children(pid))
        ready = {int(p) for p in _READY.findall(log_text())}
        if workers and set(workers) <= ready:
            return workers
        if time.monotonic() > deadline:
            raise TimeoutError(f"ocicache (pid {pid}): {len(ready & set(workers))} of {len(workers)} worker "
                               f"processes ready after {timeout:g} s")
        time.sleep(0.05)
