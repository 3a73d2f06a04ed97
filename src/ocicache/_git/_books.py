"""
The books of kept git responses and mirrors: their room in the store
(C{Kind.GIT} files and the mirrors' directories, the C{git_entries}
table, their L{Capacity} in the store's one budget), the recovery of what the store holds at
start-up, and their TTL class: an entry nobody read for C{pack_ttl} is
removed (most responses are never read twice: GitLab measured three in
four).  A mirror is one entry, named by the hash that names its
directory, of the size its directory has after each fetch.
"""

from __future__ import annotations

import os
import shutil
import time

from twisted.logger import Logger

from .._spec._reference import Digest, InvalidDigest
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._store import Kind
from ._key import ResponseKey

__all__ = ["GitBooks", "TABLE", "mirror_digest", "remove_entries"]

log = Logger()

TABLE = "git_entries"

MIRRORS = "git-mirrors"
"""The directory of the mirrors, under the store's root."""


def mirror_digest(name: str) -> Digest:
    """The entry of the mirror whose directory is C{<hex>.git}."""
    return Digest("sha256", name.removesuffix(".git"))


def mirror_path(root: str, digest: Digest) -> str:
    return os.path.join(root, MIRRORS, digest.encoded[:2], digest.encoded + ".git")


async def remove_entries(disk: Disk, digests: list[Digest]) -> None:
    """
    What eviction and expiry remove: a kept response's file, or a
    mirror's directory (a git serving from it then fails, and its client
    sees a failed transfer).
    """
    def remove() -> None:
        for digest in digests:
            if not disk.store.remove(Kind.GIT, digest):
                shutil.rmtree(mirror_path(disk.store.root, digest), ignore_errors=True)

    await disk.run(remove)


class GitBooks:
    """The L{ocicache._fetch._sink.Keeper} of git responses, and their upkeep."""

    def __init__(self, disk: Disk, capacity: Capacity, ttl: float) -> None:
        self._disk = disk
        self.capacity = capacity
        self._ttl = ttl

    async def make_room(self, key: ResponseKey, size: int) -> bool:
        return await self.capacity.make_room(size)

    def kept(self, key: ResponseKey, size: int) -> None:
        self.capacity.keep(key.digest, size)

    def not_kept(self, key: ResponseKey, size: int) -> None:
        self.capacity.release(size)

    def accessed(self, key: ResponseKey) -> None:
        self.capacity.accessed(key.digest)

    async def keep_mirror(self, digest: Digest) -> bool:
        """
        A mirror was fetched: count its directory's new size, making room
        for it; C{False} when it cannot be kept (the caller removes it).
        """
        size = await self._disk.run(_size_of, mirror_path(self._disk.store.root, digest))
        self.capacity.forget([digest])
        if not await self.capacity.make_room(size, keep=[digest]):
            return False
        self.capacity.committed(digest, size)
        self.capacity.accessed(digest)
        await self._disk.metadata.put_blob(str(digest), size, time.time(), table=TABLE)
        return True

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
    found = [(str(digest), size) for digest, _, size in disk.store.walk(Kind.GIT)]
    top = os.path.join(disk.store.root, MIRRORS)
    for prefix in sorted(os.listdir(top)) if os.path.isdir(top) else []:
        for name in sorted(os.listdir(os.path.join(top, prefix))):
            try:
                digest = mirror_digest(name)
            except InvalidDigest:
                continue  # not ours
            found.append((str(digest), _size_of(os.path.join(top, prefix, name))))
    return found


def _size_of(path: str) -> int:
    """Bytes of the files under C{path} (a mirror's directory)."""
    total = 0
    for top, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except FileNotFoundError:
                pass
    return total
