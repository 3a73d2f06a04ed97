"""
The books of kept git responses: their room in the store (C{Kind.GIT},
the C{git_entries} table, their own L{Capacity}), the recovery of what
the store holds at start-up, and their TTL class: a response nobody read
for C{pack_ttl} is removed (most are never read twice: GitLab measured
three in four).
"""

from __future__ import annotations

import time

from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spec._reference import Digest
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._store import Kind
from ._key import ResponseKey

__all__ = ["GitBooks", "TABLE"]

log = Logger()

TABLE = "git_entries"


class GitBooks:
    """The L{ocicache._fetch._sink.Keeper} of git responses, and their upkeep."""

    def __init__(self, disk: Disk, capacity: Capacity, ttl: float) -> None:
        self._disk = disk
        self.capacity = capacity
        self._ttl = ttl

    async def make_room(self, key: ResponseKey, size: int) -> bool:
        return await self.capacity.make_room(size)

    def kept(self, key: ResponseKey, size: int) -> None:
        self.capacity.committed(key.digest, size)
        self._disk.metadata.put_blob(str(key.digest), size, time.time(), table=TABLE).addErrback(
            _log_failure, "record a git response")

    def not_kept(self, key: ResponseKey, size: int) -> None:
        self.capacity.release(size)

    def accessed(self, key: ResponseKey) -> None:
        self.capacity.accessed(key.digest)

    async def recover(self) -> None:
        """
        At start-up: the rows whose files are in the store go into the
        eviction policy; rows without a file, and files without a row
        (a crash between the rename and the insert), are reconciled.
        """
        files = dict(await self._disk.run(_scan, self._disk))
        rows = await self._disk.metadata.blobs(TABLE)
        known = {row.digest for row in rows}
        gone = [row.digest for row in rows if row.digest not in files]
        if gone:
            await self._disk.metadata.delete_blobs(gone, table=TABLE)
        now = time.time()
        for name, size in files.items():
            if name not in known:
                await self._disk.metadata.put_blob(name, size, now, table=TABLE)
        ordered = sorted((row for row in rows if row.digest in files), key=lambda row: row.last_access)
        self.capacity.load((Digest.parse(row.digest), files[row.digest], row.hits > 1) for row in ordered)
        self.capacity.load((Digest.parse(name), size, False) for name, size in files.items() if name not in known)

    async def upkeep(self) -> int:
        """
        Write the reads counted since the last pass, then remove what was
        not read for C{ttl}; returns how many were removed.
        """
        metadata = self._disk.metadata
        accesses = self.capacity.take_accesses()
        if accesses:
            await metadata.touch_blobs({name: (when, hits) for name, (when, hits) in accesses.items()}, table=TABLE)
        before = time.time() - self._ttl
        expired = [Digest.parse(row.digest) for row in await metadata.blobs(TABLE) if row.last_access < before]
        await self.capacity.delete(expired)
        return len(expired)


def _scan(disk: Disk) -> list[tuple[str, int]]:
    return [(str(digest), size) for digest, _, size in disk.store.walk(Kind.GIT)]


def _log_failure(failure: Failure, what: str) -> None:
    log.failure("Could not {what}", failure, what=what)
