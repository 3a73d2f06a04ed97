"""
Turns every process on one store sees, by name: C{shared/turns/<name's
hash>}, held with C{flock(2)} as the per-key locks are
(L{ocicache._storage._key_locks}: removed by the holder as it lets go,
released by the kernel when the holder dies).  A turn is taken at once or
not at all: who does not get it waits for the holder's answer elsewhere
(L{ocicache._oci._store_manifests}).

A few quick system calls on the local disk: run them in the disk pool.
"""

from __future__ import annotations

import hashlib
import os

from ._key_locks import KeyLock, _take
from ._store import make_store_directory

__all__ = ["Turns"]


class Turns:
    """The turn files of one store."""

    def __init__(self, store_root: str) -> None:
        self.directory = os.path.join(store_root, "shared", "turns")

    def take(self, name: str) -> KeyLock | None:
        """The turn of C{name} (any text), or C{None} at once while another holder has it."""
        make_store_directory(self.directory)
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
        return _take(os.path.join(self.directory, digest))
