"""
Per-key locks that every process on one store sees, with no server: a
lock file per key under C{tmp/locks/}, held with C{flock(2)}.

The kernel releases a lock when the last descriptor of its open file is
closed, which includes its process dying, even by C{SIGKILL}: a lock
never outlives its holder and needs no lease to expire.  C{flock}, not
C{fcntl}'s record locks: those belong to a process (a second fill in the
same process would not be excluded) and are all dropped when any of its
descriptors for the file is closed.

The holder removes the file before it lets go.  A taker that locked a
file someone removed meanwhile (it opened the path before the removal)
holds a lock nobody else can see: it checks, after locking, that the path
still names the file it locked, and tries again if not.

A holder may note lines in its lock file (L{KeyLock.note}: what it is
doing, for the processes waiting on it), which others read through
L{KeyLocks.watch}; a new holder finds what a dead one left (L{KeyLock.left})
and starts the file afresh.

Every call is a few quick system calls on the local disk; run them in the
disk pool like the store's other operations.
"""

from __future__ import annotations

import fcntl
import os

from ._store import Kind, StoreKey, make_store_directory

__all__ = ["NOTES", "KeyLock", "KeyLocks", "Watched"]

NOTES = 64 << 10
"""The most of a lock file's notes anyone reads: a few short lines are all a holder writes."""


class KeyLock:
    """
    A key's lock, held until L{release} (or until this process ends).

    @ivar left: what the lock file held when it was taken: the notes of a
        holder that died without letting go (a holder that lets go
        removes its file), now gone from the file.
    """

    def __init__(self, path: str, fd: int, left: bytes = b"") -> None:
        self.path = path
        self.left = left
        self._fd: int | None = fd

    def note(self, line: bytes) -> None:
        """
        Append C{line} (one line, its newline included) to the lock file,
        for those who L{KeyLocks.watch} it.  One C{write(2)}, so that a
        reader sees a line whole or not at all past its newline.
        """
        if self._fd is None:
            raise RuntimeError("a lock that is no longer held cannot be noted")
        os.write(self._fd, line)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file, then let go; a second call does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


class KeyLocks:
    """The lock files of one store's keys."""

    def __init__(self, store_root: str) -> None:
        self.directory = os.path.join(store_root, "tmp", "locks")

    def path(self, kind: Kind, key: StoreKey) -> str:
        # A key's algorithm and encoded part are validated by its
        # constructor (lowercase hex, a known algorithm): no name escapes.
        return os.path.join(self.directory, f"{kind.value}.{key.algorithm}.{key.encoded}")

    def take(self, kind: Kind, key: StoreKey) -> KeyLock | None:
        """
        The key's lock, or C{None} at once when another holder has it
        (another process, or another fill in this one).
        """
        make_store_directory(self.directory)
        return _take(self.path(kind, key))

    def watch(self, kind: Kind, key: StoreKey) -> Watched | None:
        """
        The key's lock file, opened to follow its holder (L{Watched}), or
        C{None} when there is none.
        """
        try:
            fd = os.open(self.path(kind, key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return Watched(fd)

    def held(self, kind: Kind, key: StoreKey) -> bool:
        """
        Whether some holder has the key's lock now: a temp file for the
        key is being written, not left by a process that died.  (For the
        instant of this check the lock is held shared: a L{take} racing it
        finds the key held, and looks again later like any loser.)
        """
        try:
            fd = os.open(self.path(kind, key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def sweep(self) -> int:
        """
        Remove the lock files their holders left by dying (a holder that
        lets go removes its own); return how many.  Held ones stay.
        """
        removed = 0
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        for name in names:
            try:
                lock = _take(os.path.join(self.directory, name), create=False)
            except FileNotFoundError:
                continue
            if lock is not None:
                lock.release()
                removed += 1
        return removed


def _take(path: str, create: bool = True) -> KeyLock | None:
    """The lock at C{path}, or C{None} when it is held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        locked = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (locked.st_dev, locked.st_ino):
            # A dead holder's notes are of no use to the new one: read, then gone.
            left = os.pread(fd, NOTES, 0)
            if left:
                os.ftruncate(fd, 0)
            return KeyLock(path, fd, left)
        # Its holder removed it between our open and our lock: that
        # file is nobody's lock any more; take the path's.
        os.close(fd)



class Watched:
    """
    A key's lock file as another process sees it: whether its holder
    still holds it, and the notes it wrote.  The descriptor keeps the
    file's last notes readable after its holder removed it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def held(self) -> bool:
        """Whether the file's holder still holds it (for the instant of the check, it is held shared)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def notes(self) -> bytes:
        """The notes in the file now (at most L{NOTES} bytes)."""
        return os.pread(self._fd, NOTES, 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
