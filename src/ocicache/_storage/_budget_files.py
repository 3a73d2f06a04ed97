"""
The budget's files under C{shared/budget/}, through which every process on one
store keeps one budget with no server (L{ocicache._storage._budget}):

  - C{shared/budget/turn}: the store-wide turn.  Room is made, and entries are
    evicted, by one process at a time, under an exclusive C{flock(2)} on
    this file;
  - C{shared/budget/reserved.<pid>.<random>}: one file per process, locked by
    it for its life, holding the bytes its commits in flight have reserved
    (eight bytes, little-endian).  A process adds the others' to its own
    when it judges the room left.

The kernel lets go of a process's locks when it dies, even by C{SIGKILL}:
a dead process's turn passes to the next, and a reserved file nobody holds
is a dead process's, removed by the next reader.  (C{flock}, not
C{fcntl}'s record locks: those are the process's, not the descriptor's.)
They live in the store's C{shared/}, beside (not in) C{tmp/}, whose
temp files start-up and stops remove.
"""

from __future__ import annotations

import fcntl
import os
import struct

from ._store import make_store_directory

__all__ = ["BudgetFiles"]

_RESERVED = struct.Struct("<Q")


class BudgetFiles:
    """
    One process's view of a store's budget files.  L{take_turn} and
    L{others_reserved} block: run them in the disk pool.
    """

    def __init__(self, store_root: str) -> None:
        self.directory = os.path.join(store_root, "shared", "budget")
        self._turn: int | None = None
        self._mine: int | None = None
        self._mine_name: str | None = None

    def open(self) -> None:
        """Create this process's reserved file, locked, holding 0 (at start-up)."""
        make_store_directory(self.directory)
        unique = f"{os.getpid()}.{os.urandom(4).hex()}"
        name, making = f"reserved.{unique}", os.path.join(self.directory, f"new.{unique}")
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        # Locked before it takes a name others read: an unlocked reserved
        # file is a dead process's, and removed.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, _RESERVED.pack(0), 0)
        os.rename(making, os.path.join(self.directory, name))
        self._mine, self._mine_name = fd, name

    def close(self) -> None:
        """Remove this process's reserved file (its reservations are over)."""
        fd, self._mine = self._mine, None
        if fd is None or self._mine_name is None:
            return
        try:
            os.unlink(os.path.join(self.directory, self._mine_name))
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def publish(self, reserved: int) -> None:
        """
        Say that this process's commits in flight hold C{reserved} bytes.
        One C{pwrite} of eight bytes into the page cache: called on the
        reactor, so that the order of the values written is the order in
        which the budget changed.
        """
        if self._mine is not None:
            os.pwrite(self._mine, _RESERVED.pack(max(0, reserved)), 0)

    def take_turn(self) -> None:
        """Wait for the store-wide turn (blocks while another process has it)."""
        make_store_directory(self.directory)
        fd = os.open(os.path.join(self.directory, "turn"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._turn = fd

    def end_turn(self) -> None:
        """Let the next process have the turn."""
        fd, self._turn = self._turn, None
        if fd is not None:
            os.close(fd)

    def others_reserved(self) -> int:
        """
        The bytes the other live processes' commits in flight reserve;
        removes the files of processes that died.
        """
        total = 0
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        for name in names:
            if not name.startswith("reserved.") or name == self._mine_name:
                continue
            path = os.path.join(self.directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    data = os.pread(fd, _RESERVED.size, 0)
                    if len(data) == _RESERVED.size:
                        total += _RESERVED.unpack(data)[0]
                    continue
                # Nobody holds it: its process died without removing it.
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            finally:
                os.close(fd)
        return total
