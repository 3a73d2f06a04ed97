"""
Marks that a file is being read by another process on the same store:
the processes following a fill (L{ocicache._fetch._elsewhere}) mark the
filler's temp file, and the filler does not abandon a download someone
still reads.

A mark is an open file description lock (C{F_OFD_SETLK}, a read lock on
the file's first byte): it belongs to the reader's open file, so the
kernel drops it when that is closed or its process dies, and it is
independent of the C{flock(2)} that says a temp file is in use
(L{ocicache._storage._store.Store.in_use}).  The filler asks with
C{F_OFD_GETLK} whether a write lock on that byte would conflict, holding
no such lock itself.
"""

from __future__ import annotations

import fcntl
import struct

__all__ = ["mark_reading", "read_elsewhere"]

# struct flock (fcntl(2)): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (0 for the OFD commands), padded to its
# alignment.
_FLOCK = struct.Struct("@hhqqi4x")


def mark_reading(fd: int) -> None:
    """Mark the file open at C{fd} as being read, until C{fd} is closed."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, 0, 0, 1, 0))


def read_elsewhere(fd: int) -> bool:
    """Whether another open file (another process's) marks the file at C{fd} as being read."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, 0, 0, 1, 0))
    held: int = _FLOCK.unpack(answer)[0]
    return held != fcntl.F_UNLCK
