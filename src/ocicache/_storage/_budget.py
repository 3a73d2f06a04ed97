"""
One byte budget for everything a store keeps: C{max_size} bounds the sum
of every kind of entry (blobs, git responses and mirrors, files of package
remotes), and C{min_free} the filesystem under them.

Each kind keeps a book of its own (L{ocicache._storage._capacity.Capacity}:
its table, how its entries are removed, which must never be chosen), and
registers it here.  The budget holds what the kinds share: the byte total,
the one eviction policy that orders all of their entries (L{S3FIFO}, or in a
fleet the shared read times), the bytes reserved by commits in flight, and
the turn that room-making and evictions take.  So a git clone can evict the
oldest blobs, and a pull the oldest files, as one cache would.

Room is made before an entry is committed, not after, so the store never
exceeds C{max_size}: a commit that would cross it first evicts down to a
low-water mark (L{LOW_WATER} of the limit, minus the new entry).  An entry
larger than the whole limit is streamed to its clients and then not kept.

Room made is reserved until the commit lands or fails, and L{make_room}
calls take turns with each other and with evictions: so however many
commits of whatever kinds are in flight, the stored bytes plus the
reserved ones stay within C{max_size}, a reservation is granted only once
the files its eviction removed are gone, and C{min_free} is judged on the
free space left after them.  An entry that would not fit even with every
stored entry evicted, because commits in flight hold the room, is not kept,
rather than emptying the cache for nothing.

Several processes may serve one store (C{[server] workers}): with the
store's L{Disk}, the budget is theirs together.  Room is made and entries
evicted under a store-wide turn (L{BudgetFiles}, a C{flock}ed file), and
under it each process first brings its books up to the shared tables,
reading the log of changes SQLite's triggers keep of them
(L{ocicache._storage._database.CHANGES_SCHEMA}), so that its total is
every process's and its policy orders every process's entries; and it
counts the room the other processes' commits in flight reserved.  A
reservation is given back only once the entry's row is in the table
(L{ocicache._storage._capacity.Capacity.keep}), so no instant counts it
nowhere.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping
from typing import Protocol, TypeGuard

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from ._budget_files import BudgetFiles
from ._disk import Disk
from ._eviction import S3FIFO
from ._metadata import EntryChanges, MetadataUnavailable

__all__ = ["Book", "Budget", "LOW_WATER", "Read", "Tagged"]

log = Logger()

LOW_WATER = 0.9
"""Eviction frees space down to this fraction of C{max_size}."""

Tagged = tuple[str, Hashable]
"""An entry as the budget knows it: its book's table, and its key in that book."""

Read = tuple[str, str]
"""An entry as read times name it: its book's table, and its key's text."""


class Book(Protocol):
    """One kind of entry in a L{Budget} (L{ocicache._storage._capacity.Capacity})."""

    @property
    def table(self) -> str:
        """The metadata table that indexes the kind: unique in its budget."""

    @property
    def shares_recency(self) -> bool:
        """Whether its read times are a fleet's (then evictions go oldest read first)."""

    async def protected(self) -> Iterable[Hashable]:
        """The entries no eviction may choose now."""

    async def last_reads(self) -> Mapping[str, float] | None:
        """The latest read of each entry (by its text), or C{None}: not known now."""

    async def evicted(self, keys: list[Hashable], size: int) -> None:
        """Remove entries the policy chose, of C{size} bytes in all (already out of the policy)."""

    def follow(self, changes: Iterable[tuple[str, int | None]]) -> None:
        """Rows of its table added or resized (key text, size) or removed (size C{None}), in order."""

    def match(self, rows: Iterable[tuple[str, int]]) -> None:
        """Its table's rows (key text, size), all of them: hold exactly those."""


class Budget:
    """
    The byte budget of a store, shared by every kind of entry in it.
    """

    def __init__(self, root: str, max_size: int | None, min_free: int | float | None = None,
                 shared: Disk | None = None) -> None:
        """
        @param root: a directory on the filesystem C{min_free} is judged on.
        @param max_size: the limit of the sum of every kind; C{None}: none.
        @param min_free: bytes, or a fraction of the filesystem, to leave free.
        @param shared: the disk of a store other processes may share: the
            budget is then theirs together (L{open} before use).
        """
        self._root = root
        self._shared = shared
        self._files = BudgetFiles(shared.store.root) if shared is not None else None
        self._seen: int | None = None
        """The last change of the shared tables these books follow (C{None}: none yet)."""
        self.max_size = max_size
        self._min_free = min_free
        # Without a limit the policy still orders entries for min_free.
        self.policy = S3FIFO(max_size if max_size is not None else 1 << 62)
        self._books: dict[str, Book] = {}
        self._reserved = 0
        # make_room and evict take turns: a reservation is granted only
        # after the evictions that made its room have removed their files.
        self._turn = DeferredLock()

    def open(self) -> None:
        """With a shared store: say this process's reservations there (at start-up; blocks briefly)."""
        if self._files is not None:
            self._files.open()

    def close(self) -> None:
        """With a shared store: take this process's reservations away from it."""
        if self._files is not None:
            self._files.close()

    def register(self, book: Book) -> None:
        """Count C{book}'s entries in this budget."""
        if book.table in self._books:
            raise ValueError(f"two books of {book.table!r} in one budget")
        self._books[book.table] = book

    @property
    def size(self) -> int:
        """Bytes stored, of every kind."""
        return self.policy.size

    @property
    def reserved(self) -> int:
        """Bytes of commits in flight: room made, entry not stored yet."""
        return self._reserved

    def committed(self, tagged: Tagged, size: int) -> None:
        """An entry for which L{make_room} returned C{True} is stored: its reservation becomes it."""
        self.policy.insert(tagged, size)
        self.release(size)

    def release(self, size: int) -> None:
        """An entry for which L{make_room} returned C{True} will not be stored after all."""
        self._reserved = max(0, self._reserved - size)
        if self._files is not None:
            self._files.publish(self._reserved)

    def fits(self, size: int) -> bool:
        return self.max_size is None or size <= self.max_size

    async def make_room(self, size: int, keep: Iterable[Tagged] = ()) -> bool:
        """
        Evict, from any kind, so that a new entry of C{size} bytes fits, and
        reserve its room until L{committed} or L{release}; C{False}
        (nothing reserved) when it cannot be kept at all: larger than the
        limit, no room beside the commits in flight, or the filesystem
        cannot give it room above C{min_free}.
        """
        if not self.fits(size):
            log.info("Not keeping a {size}-byte entry: larger than max_size", size=size)
            return False
        await self._turn.acquire()
        try:
            others = await self._take_shared_turn()
            try:
                kept = await self._make_room(size, keep, others)
                if kept and self._files is not None:
                    # Said before the turn passes on: the next process
                    # counts this room as taken.
                    self._files.publish(self._reserved)
                return kept
            finally:
                self._end_shared_turn()
        finally:
            self._turn.release()

    async def _take_shared_turn(self) -> int:
        """
        With a shared store: wait for its turn, bring the books up to the
        shared tables, and return the bytes the other processes reserve.
        Alone: 0.
        """
        if self._shared is None or self._files is None:
            return 0
        files = self._files
        await self._shared.run(files.take_turn)
        try:
            # The reservations first, then the tables: a commit gives its
            # reservation back only after its row is in, so whatever was
            # given back before this read is in the rows read after it.
            # (The other order misses a commit landing between the two.)
            others = await self._shared.run(files.others_reserved)
            await self._follow_shared()
            return others
        except BaseException:
            files.end_turn()
            raise

    def _end_shared_turn(self) -> None:
        if self._files is not None:
            self._files.end_turn()

    async def _follow_shared(self) -> None:
        """Apply what every process did to the shared tables since the last look."""
        if self._shared is None:
            return
        try:
            found: EntryChanges = await self._shared.metadata.entry_changes(self._seen, list(self._books))
        except MetadataUnavailable as e:
            # The books as they are: this process's own entries, at least.
            log.warn("Cannot read what other processes stored: {error}", error=str(e))
            return
        if found.rows is not None:
            for table, book in self._books.items():
                book.match(found.rows.get(table, []))
        elif found.changes:
            by_table: dict[str, list[tuple[str, int | None]]] = {}
            for change in found.changes:
                by_table.setdefault(change.table, []).append((change.key, change.size))
            for table, changes in by_table.items():
                if table in self._books:
                    self._books[table].follow(changes)
        self._seen = found.last

    async def _make_room(self, size: int, keep: Iterable[Tagged], others: int = 0) -> bool:
        # Only this call reserves while it holds the turn; commits landing
        # or failing meanwhile only move or lower the reserved bytes.  The
        # other processes' reservations, read under the shared turn, only
        # fall meanwhile.
        reserved = self._reserved + others
        if self.max_size is not None and reserved + size > self.max_size:
            log.info("Not keeping a {size}-byte entry: commits in flight hold {reserved} bytes of max_size",
                     size=size, reserved=reserved)
            return False
        target = self.policy.size
        if self.max_size is not None and self.policy.size + reserved + size > self.max_size:
            target = min(target, int(self.max_size * LOW_WATER) - reserved - size)
        # min_free needs no reservation: an entry in flight is already
        # written under tmp/, on the same filesystem, so statvfs counts it,
        # and its commit is a rename that takes no space.  Taking turns is
        # what it needs: the free space is read after the last eviction.
        shortfall = self._free_shortfall(size)
        if shortfall > 0:
            target = min(target, self.policy.size - shortfall)
        if target < self.policy.size:
            await self._evict(max(target, 0), keep)
        if self.max_size is not None and self.policy.size + reserved + size > self.max_size:
            log.info("Not keeping a {size}-byte entry: no room beside the commits in flight", size=size)
            return False
        if shortfall > 0 and self._free_shortfall(size) > 0:
            log.warn("Not keeping a {size}-byte entry: the filesystem is below min_free", size=size)
            return False
        self._reserved += size
        return True

    async def evict(self, target: int, keep: Iterable[Tagged] = (),
                    last_access: Mapping[Read, float] | None = None) -> tuple[int, int]:
        """
        Evict entries of any kind until the store holds at most C{target}
        bytes; return C{(count, bytes)} evicted.  With C{last_access} (a
        fleet's read times of some kinds' entries), those read longest ago
        go first, the other kinds' judged by their L{Book.last_reads}.
        Waits for a L{make_room} in progress.
        """
        await self._turn.acquire()
        try:
            await self._take_shared_turn()
            try:
                return await self._evict(target, keep, last_access)
            finally:
                self._end_shared_turn()
        finally:
            self._turn.release()

    async def _evict(self, target: int, keep: Iterable[Tagged],
                     last_access: Mapping[Read, float] | None = None) -> tuple[int, int]:
        try:
            kept = set(keep)
            for book in self._books.values():
                kept.update((book.table, key) for key in await book.protected())
        except MetadataUnavailable as e:
            # Not knowing what is pinned, evict nothing: the new entry is
            # then served but not kept.
            log.warn("Not evicting: cannot tell which entries are pinned ({error})", error=str(e))
            return 0, 0
        reads = await self._reads(last_access)
        if reads is not None:
            victims = self._oldest(target, kept, reads)
        else:
            victims = [(tagged, size) for tagged, size in self.policy.evict(target, kept)
                       if _tagged(tagged) and tagged[0] in self._books]
        if not victims:
            return 0, 0
        chosen: dict[str, tuple[list[Hashable], int]] = {}
        for (table, key), size in victims:
            keys, total = chosen.get(table, ([], 0))
            keys.append(key)
            chosen[table] = (keys, total + size)
        for table, (keys, total) in chosen.items():
            await self._books[table].evicted(keys, total)
        return len(victims), sum(size for _, size in victims)

    async def _reads(self, given: Mapping[Read, float] | None) -> Mapping[Read, float] | None:
        """
        The read times evictions go by, when a fleet shares some: C{given}
        or the books' own, completed by the other books' local reads;
        C{None} (the policy's order) when no book shares them, or one that
        does cannot say now.
        """
        sharing = [book for book in self._books.values() if book.shares_recency]
        if given is None and not sharing:
            return None
        reads: dict[Read, float] = dict(given or {})
        known = {table for table, _ in reads}
        for book in self._books.values():
            if book.table in known:
                continue
            times = await book.last_reads()
            if times is None:
                if book.shares_recency:
                    return None
                continue
            reads.update(((book.table, text), at) for text, at in times.items())
        return reads

    def _oldest(self, target: int, keep: set[Tagged], reads: Mapping[Read, float]) -> list[tuple[Tagged, int]]:
        """The entries read longest ago, not in C{keep}, whose eviction brings the store to C{target} bytes."""
        candidates = [entry for entry in self.policy.keys()
                      if _tagged(entry) and entry[0] in self._books and entry not in keep]
        candidates.sort(key=lambda entry: reads.get((entry[0], str(entry[1])), 0.0))
        victims: list[tuple[Tagged, int]] = []
        left = self.policy.size
        for entry in candidates:
            if left <= target:
                break
            size = self.policy.size_of(entry) or 0
            self.policy.remove(entry)
            victims.append((entry, size))
            left -= size
        return victims

    def _free_shortfall(self, size: int) -> int:
        """How many bytes short of C{min_free} the filesystem would be after writing C{size} more."""
        if self._min_free is None:
            return 0
        # One quick system call: no need for a thread.
        stat = os.statvfs(self._root)
        total: int = stat.f_blocks * stat.f_frsize
        free: int = stat.f_bavail * stat.f_frsize
        floor = int(total * self._min_free) if isinstance(self._min_free, float) else self._min_free
        return max(0, floor - (free - size))


def _tagged(entry: Hashable) -> TypeGuard[Tagged]:
    """Whether a policy entry is a L{Tagged} one (the policy holds nothing else)."""
    return isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
