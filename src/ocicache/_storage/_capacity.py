"""
Keeping the store inside its limits: C{max_size} for the blobs, and
C{min_free} for the filesystem under them.

Room is made before a blob is committed, not after, so C{blobs/} never
exceeds C{max_size}: a commit that would cross it first evicts down to a
low-water mark (L{LOW_WATER} of the limit, minus the new blob), in the
order the L{S3FIFO} policy chooses.  A blob larger than the whole limit is
streamed to its clients and then not kept.

Room made is reserved until the commit lands (L{Capacity.committed}) or
fails (L{Capacity.release}), and C{make_room} calls take turns with each
other and with evictions: so however many commits are in flight, the
stored bytes plus the reserved ones stay within C{max_size}, a reservation
is granted only once the files its eviction removed are gone, and
C{min_free} is judged on the free space left after them.  A blob that
would not fit even with every stored blob evicted, because commits in
flight hold the room, is not kept, rather than emptying the cache for
nothing.

Reads are counted in memory, where the policy needs them, and written to
SQLite in batches by the janitor, never once per request or chunk.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeGuard

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from .._spec._reference import Digest
from ._disk import Disk
from ._eviction import S3FIFO
from ._metadata import MetadataUnavailable
from ._store import Kind

__all__ = ["Capacity", "LOW_WATER"]

log = Logger()

LOW_WATER = 0.9
"""Eviction frees space down to this fraction of C{max_size}."""


class Capacity:
    """
    The byte budget of the blob store and the policy that keeps it.
    """

    def __init__(
        self,
        disk: Disk,
        max_size: int | None,
        min_free: int | float | None,
        on_evicted: Callable[[int, int], None] = lambda count, size: None,
        protected: Callable[[], Awaitable[Iterable[Digest]]] | None = None,
        remove: Callable[[list[Digest]], Awaitable[None]] | None = None,
        table: str = "blobs",
        recency: Callable[[], Awaitable[Mapping[Digest, float] | None]] | None = None,
        kind: Kind = Kind.BLOB,
    ) -> None:
        """
        @param recency: the latest read of each blob by any node of a fleet
            sharing the store (C{None}: not known now); evictions then go
            oldest read first, rather than by this node's S3FIFO queues.
        @param protected: the blobs eviction must never choose, asked for
            each time it runs: pinned closures, and the blobs of images
            being pulled (C{[cache] protect_recent}).
        @param remove: removes blobs from where they are kept; by default
            unlinks their files in the store (an S3 bucket gives its own).
        @param table: the metadata table that indexes them
            (L{ocicache._storage._metadata.BLOB_TABLES}).
        @param kind: what the store holds them as (its directory), for the
            default C{remove}.
        """
        self._kind = kind
        self._disk = disk
        self._remove = remove if remove is not None else self._unlink
        self.table = table
        self._reactor = disk.reactor
        self._store = disk.store
        self._metadata = disk.metadata
        self.max_size = max_size
        self._min_free = min_free
        self._on_evicted = on_evicted
        self._protected = protected
        self._recency = recency
        # Without a limit the policy still orders blobs for min_free.
        self.policy = S3FIFO(max_size if max_size is not None else 1 << 62)
        self._accesses: dict[str, tuple[float, int]] = {}
        self._reserved = 0
        # make_room and evict take turns: a reservation is granted only
        # after the evictions that made its room have unlinked their files.
        self._turn = DeferredLock()

    @property
    def size(self) -> int:
        """Bytes of the blobs in the store."""
        return self.policy.size

    @property
    def reserved(self) -> int:
        """Bytes of commits in flight: room made, blob not in the store yet."""
        return self._reserved

    def load(self, blobs: Iterable[tuple[Digest, int, bool]]) -> None:
        """
        Fill the policy at start-up with C{(digest, size, hot)}, oldest
        access first; C{hot} blobs were read more than once.
        """
        for digest, size, hot in blobs:
            self.policy.insert(digest, size, hot=hot)

    def accessed(self, digest: Digest) -> None:
        self.policy.access(digest)
        key = str(digest)
        _, hits = self._accesses.get(key, (0.0, 0))
        self._accesses[key] = (self._reactor.seconds(), hits + 1)

    def pending_accesses(self) -> Mapping[str, tuple[float, int]]:
        """The reads not yet taken by L{take_accesses} (digest to last read, reads)."""
        return self._accesses

    def take_accesses(self) -> dict[str, tuple[float, int]]:
        accesses, self._accesses = self._accesses, {}
        return accesses

    def committed(self, digest: Digest, size: int) -> None:
        """
        A blob for which L{make_room} returned C{True} is in the store: its
        reservation becomes a stored blob.
        """
        self._reserved = max(0, self._reserved - size)
        self.policy.insert(digest, size)

    def release(self, size: int) -> None:
        """
        A blob for which L{make_room} returned C{True} will not be stored
        after all (its commit failed): give its room back.
        """
        self._reserved = max(0, self._reserved - size)

    def forget(self, digests: Iterable[Digest]) -> None:
        for digest in digests:
            self.policy.remove(digest)

    def fits(self, size: int) -> bool:
        return self.max_size is None or size <= self.max_size

    async def make_room(self, size: int, keep: Iterable[Digest] = ()) -> bool:
        """
        Evict so that a new blob of C{size} bytes fits, and reserve its room
        until L{committed} or L{release}; C{False} (nothing reserved) when
        it cannot be kept at all: larger than the limit, no room beside the
        commits in flight, or the filesystem cannot give it room above
        C{min_free}.
        """
        if not self.fits(size):
            log.info("Not keeping a {size}-byte blob: larger than max_size", size=size)
            return False
        await self._turn.acquire()
        try:
            return await self._make_room(size, keep)
        finally:
            self._turn.release()

    async def _make_room(self, size: int, keep: Iterable[Digest]) -> bool:
        # Only this call reserves while it holds the turn; commits landing
        # or failing meanwhile only move or lower the reserved bytes.
        if self.max_size is not None and self._reserved + size > self.max_size:
            log.info("Not keeping a {size}-byte blob: commits in flight hold {reserved} bytes of max_size",
                     size=size, reserved=self._reserved)
            return False
        target = self.policy.size
        if self.max_size is not None and self.policy.size + self._reserved + size > self.max_size:
            target = min(target, int(self.max_size * LOW_WATER) - self._reserved - size)
        # min_free needs no reservation: a blob in flight is already written
        # under tmp/, on the same filesystem, so statvfs counts it, and its
        # commit is a rename that takes no space.  Taking turns is what it
        # needs: the free space is read after the last eviction's unlinks.
        shortfall = self._free_shortfall(size)
        if shortfall > 0:
            target = min(target, self.policy.size - shortfall)
        if target < self.policy.size:
            await self._evict(max(target, 0), keep)
        if self.max_size is not None and self.policy.size + self._reserved + size > self.max_size:
            log.info("Not keeping a {size}-byte blob: no room beside the commits in flight", size=size)
            return False
        if shortfall > 0 and self._free_shortfall(size) > 0:
            log.warn("Not keeping a {size}-byte blob: the filesystem is below min_free", size=size)
            return False
        self._reserved += size
        return True

    async def evict(self, target: int, keep: Iterable[Digest] = ()) -> tuple[int, int]:
        """
        Evict blobs until the store holds at most C{target} bytes; return
        C{(count, bytes)} evicted.  Waits for a L{make_room} in progress.
        """
        await self._turn.acquire()
        try:
            return await self._evict(target, keep)
        finally:
            self._turn.release()

    async def evict_oldest(self, target: int, last_access: Mapping[Digest, float]) -> tuple[int, int]:
        """
        Evict the blobs read longest ago until the store holds at most
        C{target} bytes; return C{(count, bytes)} evicted.  The order of a
        fleet's shared read times (L{ocicache._storage._bucket.BucketBook}),
        which this node's S3FIFO queues, knowing only its own reads, cannot
        give; a blob without a time goes first.  Takes turns as L{evict}.
        """
        await self._turn.acquire()
        try:
            return await self._evict(target, (), last_access)
        finally:
            self._turn.release()

    async def protected(self) -> set[Digest]:
        """The blobs no eviction or expiry may remove now."""
        return set(await self._protected()) if self._protected is not None else set()

    async def _evict(self, target: int, keep: Iterable[Digest],
                     last_access: Mapping[Digest, float] | None = None) -> tuple[int, int]:
        try:
            keep = set(keep) | await self.protected()
        except MetadataUnavailable as e:
            # Not knowing what is pinned, evict nothing: the new blob is
            # then served but not kept.
            log.warn("Not evicting: cannot tell which blobs are pinned ({error})", error=str(e))
            return 0, 0
        if last_access is None and self._recency is not None:
            last_access = await self._recency()
        if last_access is not None:
            digests, freed = self._oldest(target, keep, last_access)
        else:
            victims = self.policy.evict(target, keep)
            digests = [victim for victim, _ in victims if _is_key(victim)]
            freed = sum(size for _, size in victims)
        if not digests:
            return 0, 0
        await self.delete(digests)
        self._on_evicted(len(digests), freed)
        return len(digests), freed

    def _oldest(self, target: int, keep: set[Digest], last_access: Mapping[Digest, float]) -> tuple[list[Digest], int]:
        """The blobs read longest ago, not in C{keep}, whose eviction brings the store to C{target} bytes."""
        candidates = [key for key in self.policy.keys() if _is_key(key) and key not in keep]
        candidates.sort(key=lambda digest: last_access.get(digest, 0.0))
        victims: list[Digest] = []
        left, freed = self.policy.size, 0
        for digest in candidates:
            if left <= target:
                break
            size = self.policy.size_of(digest) or 0
            victims.append(digest)
            left -= size
            freed += size
        return victims, freed

    async def delete(self, digests: list[Digest]) -> None:
        """
        Remove blobs from disk and from the metadata.  A client reading
        one keeps reading it: its descriptor stays valid after the unlink.
        """
        if not digests:
            return
        await self._remove(digests)
        self.forget(digests)
        await self._metadata.delete_blobs((str(digest) for digest in digests), table=self.table)

    async def _unlink(self, digests: list[Digest]) -> None:
        def unlink_all() -> None:
            for digest in digests:
                self._store.remove(self._kind, digest)

        await self._disk.run(unlink_all)

    def _free_shortfall(self, size: int) -> int:
        """
        How many bytes short of C{min_free} the filesystem would be after
        writing C{size} more.
        """
        if self._min_free is None:
            return 0
        # One quick system call: no need for a thread.
        stat = os.statvfs(self._store.root)
        total: int = stat.f_blocks * stat.f_frsize
        free: int = stat.f_bavail * stat.f_frsize
        floor = int(total * self._min_free) if isinstance(self._min_free, float) else self._min_free
        return max(0, floor - (free - size))



def _is_key(entry: object) -> TypeGuard[Digest]:
    """
    Whether a policy entry names a stored file: a L{Digest}, or another
    kind's key (L{ocicache._storage._store.StoreKey}: a file of a package
    repository, a git response), which this module handles as it handles
    digests (typed as one).
    """
    return hasattr(entry, "algorithm") and hasattr(entry, "encoded")
