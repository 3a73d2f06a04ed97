"""
The eviction policy: S3-FIFO (Yang et al., "FIFO queues are all you need
for cache eviction", SOSP 2023), sized in bytes.

Why not LRU: a one-off pull of a big image would push every blob that
builds use daily out of an LRU cache.  S3-FIFO puts new blobs on a small
probation queue; a blob read again while on probation is promoted to the
main queue, and a blob that leaves probation unread is evicted, leaving
only its name in a ghost set.  A one-off scan passes through probation and
never touches the main queue, which holds the hot set.  A blob evicted
from probation that is fetched again soon (its name is a ghost) goes
straight to the main queue.

This is a pure data structure: it decides, callers delete.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable

__all__ = ["S3FIFO", "Entries", "Sizes"]


SMALL_FRACTION = 0.1
"""The probation queue's share of the capacity, as in the paper."""

MAX_FREQUENCY = 3
"""Reads counted per entry (two bits in the paper)."""


class Sizes:
    """Entries and their sizes, as a book's users ask about them; changed only by the subclass's rules."""

    def __init__(self) -> None:
        self._sizes: dict[Hashable, int] = {}
        self.size = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def keys(self) -> list[Hashable]:
        return list(self._sizes)

    def size_of(self, key: Hashable) -> int | None:
        """The size of an entry, or C{None} when it is not here."""
        return self._sizes.get(key)


class Entries(Sizes):
    """A book with no order of its own: one kind's entries in a shared budget, which orders them."""

    def add(self, key: Hashable, size: int) -> bool:
        """Count an entry; C{False} if it was already counted."""
        if key in self._sizes:
            return False
        self._sizes[key] = size
        self.size += size
        return True

    def drop(self, key: Hashable) -> None:
        self.size -= self._sizes.pop(key, 0)


class S3FIFO(Sizes):
    """
    Which blobs to evict, and in which order, to fit a byte budget.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._small: OrderedDict[Hashable, int] = OrderedDict()
        self._main: OrderedDict[Hashable, int] = OrderedDict()
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()
        self._small_bytes = 0

    def insert(self, key: Hashable, size: int, hot: bool = False) -> None:
        """
        Add a newly stored entry.  C{hot} puts it straight into the main
        queue (entries reloaded at start-up that had been read before).
        """
        if key in self._sizes:
            return
        self._sizes[key] = size
        self.size += size
        if hot or key in self._ghost:
            self._ghost.pop(key, None)
            self._main[key] = 0
        else:
            self._small[key] = 0
            self._small_bytes += size

    def access(self, key: Hashable) -> None:
        """
        Count a read: cheap, since it only bumps a counter in place.
        """
        if key in self._small:
            self._small[key] = min(self._small[key] + 1, MAX_FREQUENCY)
        elif key in self._main:
            self._main[key] = min(self._main[key] + 1, MAX_FREQUENCY)

    def remove(self, key: Hashable) -> None:
        """
        Forget an entry removed for another reason (expiry, repair).
        """
        size = self._sizes.pop(key, None)
        if size is None:
            return
        self.size -= size
        if key in self._small:
            del self._small[key]
            self._small_bytes -= size
        else:
            self._main.pop(key, None)

    def evict(self, target: int, keep: Iterable[Hashable] = ()) -> list[tuple[Hashable, int]]:
        """
        Choose entries to evict until the total size is at most C{target};
        return them as C{(key, size)} in eviction order.  Entries in
        C{keep} are not chosen.
        """
        keep = set(keep)
        victims: list[tuple[Hashable, int]] = []
        # Each pass moves or removes an entry; bound the work for the case
        # where everything left is kept.
        budget = 4 * (len(self._small) + len(self._main)) + 4
        while self.size > target and (self._small or self._main) and budget > 0:
            budget -= 1
            if self._small and (self._small_bytes >= SMALL_FRACTION * self.capacity or not self._main):
                victim = self._evict_small(keep)
            else:
                victim = self._evict_main(keep)
            if victim is not None:
                victims.append(victim)
        return victims

    def _evict_small(self, keep: set[Hashable]) -> tuple[Hashable, int] | None:
        key, frequency = self._small.popitem(last=False)
        size = self._sizes[key]
        self._small_bytes -= size
        if frequency > 0:
            # Read again while on probation: it earns a place in main.
            self._main[key] = 0
            return None
        if key in keep:
            self._main[key] = 0
            return None
        del self._sizes[key]
        self.size -= size
        self._ghost[key] = None
        while len(self._ghost) > max(len(self._main), 1) * 2:
            self._ghost.popitem(last=False)
        return key, size

    def _evict_main(self, keep: set[Hashable]) -> tuple[Hashable, int] | None:
        key, frequency = self._main.popitem(last=False)
        if frequency > 0 or key in keep:
            # A second chance: back to the tail with one read spent.
            self._main[key] = max(frequency - 1, 0)
            return None
        size = self._sizes.pop(key)
        self.size -= size
        return key, size
