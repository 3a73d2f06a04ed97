"""
One kind of entry's book in the store's budget: the blobs, the git
responses and mirrors, the files of package remotes, each a L{Capacity}
registered with the one L{Budget} of the store they live in.

The budget bounds their sum and chooses what to evict among all of them
(L{ocicache._storage._budget}); a book says what is its own: its metadata
table, how its entries are removed, which must never be chosen (pinned
closures, images being pulled), and its reads, counted in memory where the
policy needs them and written to SQLite in batches by the janitor, never
once per request or chunk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import TypeGuard

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spec._reference import Digest
from ._budget import Budget, Tagged
from ._disk import Disk
from ._eviction import Entries
from ._metadata import MetadataUnavailable
from ._store import Kind

__all__ = ["Capacity"]

log = Logger()


class Capacity:
    """
    One kind's entries in a store's L{Budget}: their bytes, reads and
    eviction (chosen by the budget, among every kind).
    """

    def __init__(
        self,
        budget: Budget,
        disk: Disk,
        on_evicted: Callable[[int, int], None] = lambda count, size: None,
        protected: Callable[[], Awaitable[Iterable[Digest]]] | None = None,
        remove: Callable[[list[Digest]], Awaitable[None]] | None = None,
        table: str = "blobs",
        recency: Callable[[], Awaitable[Mapping[Digest, float] | None]] | None = None,
        kind: Kind = Kind.BLOB,
        parse: Callable[[str], Hashable] = Digest.parse,
    ) -> None:
        """
        @param budget: the store's budget, which this kind joins.
        @param recency: the latest read of each entry by any node of a
            fleet sharing the store (C{None}: not known now); evictions then
            go oldest read first, rather than by this node's S3FIFO queues.
        @param protected: the entries eviction must never choose, asked for
            each time it runs: pinned closures, and the blobs of images
            being pulled (C{[cache] protect_recent}).
        @param remove: removes entries from where they are kept; by default
            unlinks their files in the store (an S3 bucket gives its own).
        @param table: the metadata table that indexes them
            (L{ocicache._storage._metadata.BLOB_TABLES}).
        @param kind: what the store holds them as (its directory), for the
            default C{remove}.
        @param parse: a key from its text in the table (other processes'
            entries are learnt from there).
        """
        self._parse = parse
        self.budget = budget
        self._kind = kind
        self._disk = disk
        self._remove = remove if remove is not None else self._unlink
        self.table = table
        self._reactor = disk.reactor
        self._store = disk.store
        self._metadata = disk.metadata
        self._on_evicted = on_evicted
        self._protected = protected
        self._recency = recency
        self.policy = Entries()
        """This kind's entries (the budget's policy orders them among every kind's)."""
        self._accesses: dict[str, tuple[float, int]] = {}
        budget.register(self)

    @property
    def max_size(self) -> int | None:
        """The limit of the whole budget, which this kind shares."""
        return self.budget.max_size

    @property
    def size(self) -> int:
        """Bytes of this kind's entries in the store."""
        return self.policy.size

    @property
    def reserved(self) -> int:
        """Bytes of commits in flight, of every kind: room made, entry not stored yet."""
        return self.budget.reserved

    @property
    def shares_recency(self) -> bool:
        return self._recency is not None

    def _tagged(self, key: Hashable) -> Tagged:
        return (self.table, key)

    def load(self, entries: Iterable[tuple[Digest, int, bool]]) -> None:
        """
        Fill the policy at start-up with C{(key, size, hot)}, oldest
        access first; C{hot} entries were read more than once.
        """
        for key, size, hot in entries:
            if self.policy.add(key, size):
                self.budget.policy.insert(self._tagged(key), size, hot=hot)

    def accessed(self, key: Digest) -> None:
        self.budget.policy.access(self._tagged(key))
        text = str(key)
        _, hits = self._accesses.get(text, (0.0, 0))
        self._accesses[text] = (self._reactor.seconds(), hits + 1)

    def pending_accesses(self) -> Mapping[str, tuple[float, int]]:
        """The reads not yet taken by L{take_accesses} (key to last read, reads)."""
        return self._accesses

    def take_accesses(self) -> dict[str, tuple[float, int]]:
        accesses, self._accesses = self._accesses, {}
        return accesses

    def committed(self, key: Digest, size: int) -> None:
        """
        An entry for which L{make_room} returned C{True} is in the store:
        its reservation becomes a stored entry.
        """
        if self.policy.add(key, size):
            self.budget.committed(self._tagged(key), size)
        else:
            self.budget.release(size)

    def keep(self, key: Digest, size: int) -> Deferred[None]:
        """
        An entry for which L{make_room} returned C{True} is in the store:
        write its row, then let its reservation become it.  In that order:
        other processes on the store count it as reserved until they can
        count it as stored.  A row that cannot be written is logged (the
        janitor adopts the file again).
        """
        recorded = self._metadata.put_blob(str(key), size, self._reactor.seconds(), table=self.table)

        def failed(failure: Failure) -> None:
            log.warn("Could not record {key} in {table}: {error}", key=str(key), table=self.table,
                     error=failure.getErrorMessage())

        recorded.addCallbacks(lambda _: None, failed)
        recorded.addCallback(lambda _: self.committed(key, size))
        return recorded

    def release(self, size: int) -> None:
        """
        An entry for which L{make_room} returned C{True} will not be stored
        after all (its commit failed): give its room back.
        """
        self.budget.release(size)

    def follow(self, changes: Iterable[tuple[str, int | None]]) -> None:
        """
        Rows of this kind's table added or resized (key text, size) or
        removed (size C{None}), in the order they were, by any process on
        the store: the policy follows.
        """
        for text, size in changes:
            key = self._key(text)
            if key is None:
                continue
            known = self.policy.size_of(key)
            if known is not None and known != size:
                self.forget([key])
            if size is not None and known != size:
                self.load([(key, size, False)])

    def match(self, rows: Iterable[tuple[str, int]]) -> None:
        """Hold exactly these rows of this kind's table (key text, size), as every process left them."""
        wanted: dict[Digest, int] = {}
        for text, size in rows:
            key = self._key(text)
            if key is not None:
                wanted[key] = size
        self.forget([key for key in self.policy.keys() if _is_key(key) and wanted.get(key) != self.policy.size_of(key)])
        self.load((key, size, False) for key, size in wanted.items() if key not in self.policy)

    def _key(self, text: str) -> Digest | None:
        try:
            key = self._parse(text)
        except ValueError:
            return None  # not a row this code wrote: never one to evict by name
        return key if _is_key(key) else None

    def forget(self, keys: Iterable[Digest]) -> None:
        for key in keys:
            self.policy.drop(key)
            self.budget.policy.remove(self._tagged(key))

    def fits(self, size: int) -> bool:
        return self.budget.fits(size)

    async def make_room(self, size: int, keep: Iterable[Digest] = ()) -> bool:
        """
        Evict, from any kind of the budget, so that a new entry of C{size}
        bytes fits, and reserve its room until L{committed} or L{release}
        (L{Budget.make_room}); C{False}: it cannot be kept.
        """
        return await self.budget.make_room(size, [self._tagged(key) for key in keep])

    async def evict(self, target: int, keep: Iterable[Digest] = ()) -> tuple[int, int]:
        """
        Evict entries of any kind until the budget holds at most C{target}
        bytes; return C{(count, bytes)} evicted.
        """
        return await self.budget.evict(target, [self._tagged(key) for key in keep])

    async def evict_oldest(self, target: int, last_access: Mapping[Digest, float]) -> tuple[int, int]:
        """
        Evict the entries read longest ago until the budget holds at most
        C{target} bytes: C{last_access} is a fleet's read times of this
        kind (L{ocicache._storage._bucket.BucketBook}), which this node's
        S3FIFO queues, knowing only its own reads, cannot give; an entry
        without a time goes first.
        """
        reads = {(self.table, str(key)): at for key, at in last_access.items()}
        return await self.budget.evict(target, (), reads)

    async def protected(self) -> set[Digest]:
        """The entries no eviction or expiry may remove now."""
        return set(await self._protected()) if self._protected is not None else set()

    async def last_reads(self) -> Mapping[str, float] | None:
        """
        The latest read of each entry: the fleet's (C{recency}), or this
        node's (its rows, and the reads not written yet); C{None} when not
        known now.
        """
        if self._recency is not None:
            shared = await self._recency()
            return None if shared is None else {str(key): at for key, at in shared.items()}
        try:
            rows = await self._metadata.blobs(self.table)
        except MetadataUnavailable:
            return None
        pending = self._accesses
        return {row.digest: max(row.last_access, pending.get(row.digest, (0.0, 0))[0]) for row in rows}

    async def evicted(self, keys: list[Hashable], size: int) -> None:
        """The budget chose these entries: remove them."""
        digests: list[Digest] = [key for key in keys if _is_key(key)]
        await self.delete(digests)
        self._on_evicted(len(digests), size)

    async def delete(self, digests: list[Digest]) -> None:
        """
        Remove entries from where they are kept and from the metadata.  A
        client reading one keeps reading it: its descriptor stays valid
        after the unlink.
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


def _is_key(entry: object) -> TypeGuard[Digest]:
    """
    Whether an entry names a stored file: a L{Digest}, or another kind's
    key (L{ocicache._storage._store.StoreKey}: a file of a package
    repository, a git response), which this module handles as it handles
    digests (typed as one).
    """
    return hasattr(entry, "algorithm") and hasattr(entry, "encoded")
