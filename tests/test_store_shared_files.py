"""
The files through which processes on one store share state with no server:
the budget's (L{ocicache._storage._budget_files}) and the upstreams' pauses
(L{ocicache._storage._pause_files}).  Two instances on one directory stand
for two processes: each opens its own descriptors, and C{flock} locks
belong to an open file description, not to a process.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
from pathlib import Path

from ocicache._storage._budget_files import BudgetFiles
from ocicache._storage._pause_files import PauseFiles


def test_each_process_sees_the_others_reservations(tmp_path: Path) -> None:
    one, two = BudgetFiles(str(tmp_path)), BudgetFiles(str(tmp_path))
    one.open()
    two.open()
    one.publish(600)
    two.publish(100)
    assert two.others_reserved() == 600 and one.others_reserved() == 100
    one.publish(0)
    assert two.others_reserved() == 0
    # A process that stops takes its reservations away.
    one.publish(300)
    one.close()
    assert two.others_reserved() == 0
    assert len([name for name in os.listdir(two.directory) if name.startswith("reserved.")]) == 1
    two.close()


def _reserve_and_die(root: str, ready: multiprocessing.synchronize.Event) -> None:
    files = BudgetFiles(root)
    files.open()
    files.publish(700)
    ready.set()
    os.kill(os.getpid(), signal.SIGSTOP)


def test_a_dead_process_reservations_go_with_it(tmp_path: Path) -> None:
    ready = multiprocessing.get_context("fork").Event()
    child = multiprocessing.get_context("fork").Process(target=_reserve_and_die, args=(str(tmp_path), ready))
    child.start()
    mine = BudgetFiles(str(tmp_path))
    mine.open()
    try:
        assert ready.wait(10)
        assert mine.others_reserved() == 700
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(10)
        # Its file is nobody's now: not counted, and removed.
        assert mine.others_reserved() == 0
        assert [name for name in os.listdir(mine.directory) if name.startswith("reserved.")] == [
            name for name in os.listdir(mine.directory) if name.startswith(f"reserved.{os.getpid()}.")]
    finally:
        if child.is_alive():
            os.kill(child.pid or 0, signal.SIGKILL)
            child.join(10)
        mine.close()


def test_the_turn_is_one_process_at_a_time(tmp_path: Path) -> None:
    one = BudgetFiles(str(tmp_path))
    one.take_turn()
    probe = os.open(os.path.join(one.directory, "turn"), os.O_RDWR)
    try:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            taken = False
        assert not taken, "another process took the turn while one had it"
        one.end_turn()
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)


def test_a_pause_is_seen_by_every_process_and_only_grows(tmp_path: Path) -> None:
    one, two = PauseFiles(str(tmp_path)), PauseFiles(str(tmp_path))
    assert two.until("docker.io") is None
    one.pause("docker.io", 1000.0)
    assert two.until("docker.io") == 1000.0
    # A shorter pause does not cut a longer one short.
    two.pause("docker.io", 900.0)
    assert one.until("docker.io") == 1000.0
    two.pause("docker.io", 1100.0)
    assert one.until("docker.io") == 1100.0
    # Each upstream its own, whatever its name holds.
    assert one.until("../ghcr.io") is None
    one.close()
    two.close()
