"""
Until when each upstream is left alone, for every process on one store:
C{shared/pauses/<name's hash>}, eight bytes holding a time (seconds since the
epoch, a little-endian double).  A process that an upstream answers
C{429} writes how long the upstream asked to be left alone
(L{ocicache._upstream._client.Upstream.note_quota}); every process reads
it before it asks that upstream anything, so that no process prolongs the
upstream's limit while another obeys it.

Each file is opened once and its descriptor kept: a read is one C{pread}
of eight bytes from the page cache, so it is done on the reactor, before
each upstream request.  A pause only ever grows: the write reads, compares
and writes under an exclusive C{flock}.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import struct

from ._store import make_store_directory

__all__ = ["PauseFiles"]

_UNTIL = struct.Struct("<d")


class PauseFiles:
    """The pause files of one store's upstreams."""

    def __init__(self, store_root: str) -> None:
        self.directory = os.path.join(store_root, "shared", "pauses")
        self._fds: dict[str, int] = {}

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            make_store_directory(self.directory)
            # Any upstream name, as a file name that cannot escape the directory.
            digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
            fd = os.open(os.path.join(self.directory, digest), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fds[name] = fd
        return fd

    def until(self, name: str) -> float | None:
        """Until when the upstream C{name} is left alone, if any process said so; C{OSError} when unreadable."""
        data = os.pread(self._fd(name), _UNTIL.size, 0)
        if len(data) != _UNTIL.size:
            return None
        (until,) = _UNTIL.unpack(data)
        return until if math.isfinite(until) and until > 0 else None

    def pause(self, name: str, until: float) -> None:
        """Leave the upstream C{name} alone until C{until}, unless a process said longer."""
        fd = self._fd(name)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            known = self.until(name)
            if known is None or until > known:
                os.pwrite(fd, _UNTIL.pack(until), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
