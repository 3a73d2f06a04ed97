"""
Download slots every process on one store sees (L{ocicache._fetch._slots}):
C{shared/slots/<name>.<n>}, one file per slot of a bound, held with
C{flock(2)} while a fetch uses it.

The kernel lets go of a dead process's locks, even after C{SIGKILL}, so its
slots come back by themselves.  A lock on an open file description is
refused to any other description, this process's included, so each slot
file is opened once and its descriptor kept; which of its own this process
holds it counts itself.  Taking or giving a slot is then one C{flock} with
C{LOCK_NB} on a descriptor already open: it never waits, and touches no
disk, so it is called on the reactor.
"""

from __future__ import annotations

import fcntl
import hashlib
import os

from ._store import make_store_directory

__all__ = ["SlotFiles"]


class SlotFiles:
    """The slot files of one store's bounds, by name (C{"all"}, or an upstream's)."""

    def __init__(self, store_root: str) -> None:
        self.directory = os.path.join(store_root, "shared", "slots")
        self._fds: dict[str, list[int]] = {}
        self._held: dict[str, set[int]] = {}

    def _file(self, name: str, index: int) -> str:
        # Any upstream name, as a file name that cannot escape the directory.
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
        return os.path.join(self.directory, f"{digest}.{index}")

    def take(self, name: str, limit: int) -> int | None:
        """
        One of the C{limit} slots of C{name} no process holds, now held by
        this one; C{None} when every one is held.  C{OSError} when the
        files cannot be made.
        """
        fds = self._fds.setdefault(name, [])
        held = self._held.setdefault(name, set())
        if len(fds) < limit:
            make_store_directory(self.directory)
            while len(fds) < limit:
                fds.append(os.open(self._file(name, len(fds)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for index in range(limit):
            if index in held:
                continue
            try:
                fcntl.flock(fds[index], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            held.add(index)
            return index
        return None

    def give(self, name: str, index: int) -> None:
        """Let go of a slot L{take} gave."""
        held = self._held.get(name)
        if held is None or index not in held:
            return
        held.discard(index)
        fcntl.flock(self._fds[name][index], fcntl.LOCK_UN)

    def close(self) -> None:
        """Close every slot file (their locks go with them)."""
        for fds in self._fds.values():
            for fd in fds:
                os.close(fd)
        self._fds.clear()
        self._held.clear()
