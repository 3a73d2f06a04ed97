"""
Per-key locks across processes (L{ocicache._storage._key_locks}), with a
real second process: one holder at a time, within a process and across
processes; a holder killed with SIGKILL lets go with no lease to expire;
the files of dead holders swept, held ones kept; and a taker that locked
a file its holder removed meanwhile tries again rather than holding a
lock nobody sees.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocicache._spec._reference import Digest
from ocicache._storage._key_locks import KeyLocks
from ocicache._storage._store import Kind
from ocitest.daemon import daemon_root

pytestmark = pytest.mark.integration

KEY = Digest.parse("sha256:" + "ab" * 32)
OTHER = Digest.parse("sha256:" + "cd" * 32)

HOLDER = """
import sys, time
from ocicache._spec._reference import Digest
from ocicache._storage._key_locks import KeyLocks
from ocicache._storage._store import Kind
lock = KeyLocks(sys.argv[1]).take(Kind.BLOB, Digest.parse(sys.argv[2]))
print("held" if lock is not None else "refused", flush=True)
time.sleep(600)
"""


@pytest.fixture
def locks(tmp_path: Path) -> KeyLocks:
    return KeyLocks(str(tmp_path))


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding C{KEY}'s lock."""
    env = {**os.environ, "PYTHONPATH": daemon_root() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), str(KEY)], env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


def test_one_holder_at_a_time_within_a_process(locks: KeyLocks) -> None:
    first = locks.take(Kind.BLOB, KEY)
    assert first is not None and locks.held(Kind.BLOB, KEY)
    assert locks.take(Kind.BLOB, KEY) is None
    # Another key, or the same one of another kind, is another lock.
    other = locks.take(Kind.BLOB, OTHER)
    manifest = locks.take(Kind.MANIFEST, KEY)
    assert other is not None and manifest is not None
    first.release()
    first.release()
    assert not os.path.exists(first.path) and not locks.held(Kind.BLOB, KEY)
    again = locks.take(Kind.BLOB, KEY)
    assert again is not None
    for lock in (again, other, manifest):
        lock.release()
    assert os.listdir(locks.directory) == []


def test_a_lock_held_by_another_process_is_seen_and_freed_when_it_is_killed(
        locks: KeyLocks, holder: subprocess.Popen[str]) -> None:
    assert locks.held(Kind.BLOB, KEY)
    assert locks.take(Kind.BLOB, KEY) is None
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # The kernel let go with the process; its file stays until swept.
    assert not locks.held(Kind.BLOB, KEY)
    taken = locks.take(Kind.BLOB, KEY)
    assert taken is not None
    taken.release()


def test_sweep_removes_what_dead_holders_left_and_keeps_what_is_held(
        locks: KeyLocks, holder: subprocess.Popen[str]) -> None:
    mine = locks.take(Kind.BLOB, OTHER)
    assert mine is not None
    left = locks.path(Kind.MANIFEST, KEY)
    Path(left).touch()  # a holder that died before it could remove it
    assert locks.sweep() == 1
    assert not os.path.exists(left)
    assert locks.held(Kind.BLOB, KEY) and locks.held(Kind.BLOB, OTHER)
    mine.release()


def test_a_file_removed_between_open_and_lock_is_not_a_lock(
        locks: KeyLocks, monkeypatch: pytest.MonkeyPatch) -> None:
    holding = locks.take(Kind.BLOB, KEY)
    assert holding is not None
    real_flock = fcntl.flock
    calls = []

    def holder_lets_go_meanwhile(fd: int, operation: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            # The taker opened the holder's file; the holder now removes
            # it and lets go, so the taker's lock is on a removed file.
            holding.release()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", holder_lets_go_meanwhile)
    taken = locks.take(Kind.BLOB, KEY)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert taken is not None and len(calls) == 2
    # What it holds is the path's file: everyone else sees it held.
    assert locks.held(Kind.BLOB, KEY) and locks.take(Kind.BLOB, KEY) is None
    taken.release()
