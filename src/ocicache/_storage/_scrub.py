"""
The scrub: stored entries are checked again in the background (a blob
re-hashed; another kind of entry by its own check), at a bounded rate,
so that a blob corrupted at rest (a bad sector, a stray write) is found and
taken out of the store before anyone is served it again, without an
operator running C{ocicache verify}.

One blob is hashed at a time, in the disk thread; after it the scrub
sleeps for as long as that blob's bytes take at C{rate}, so it never costs
more than C{rate} bytes per second of disk and CPU.  A blob that does not
hash to its name is moved to C{quarantine/}, forgotten by the eviction
policy and the database, and counted; the next client fetches it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from .._spec._reference import Digest
from ._capacity import Capacity
from ._disk import Disk
from ._janitor import verify_file
from ._store import Kind

__all__ = ["ROUND_PAUSE", "Scrubber", "quarantine"]

log = Logger()

ROUND_PAUSE = 10.0
"""Seconds between one round over the store and the next."""


class Scrubber:
    """
    Start it with L{start}, stop it with L{stop}.  C{on_scrubbed(size)}
    and C{on_corrupt(digest)} report what it did (the metrics).
    """

    def __init__(
        self,
        disk: Disk,
        capacity: Capacity,
        rate: int,
        on_scrubbed: Callable[[int], None] = lambda size: None,
        on_corrupt: Callable[[Digest], None] = lambda digest: None,
        kind: Kind = Kind.BLOB,
        check: Callable[[str, Digest], bool] = verify_file,
    ) -> None:
        """
        @param kind: the entries scrubbed (one scrubber per kind).
        @param check: whether the file at a path is still the entry of that
            name; blocking (run in the disk thread).  For blobs, that it
            hashes to its digest.
        """
        self._kind = kind
        self._check = check
        self._disk = disk
        self._capacity = capacity
        self._rate = rate
        self._on_scrubbed = on_scrubbed
        self._on_corrupt = on_corrupt
        self._queue: deque[tuple[Digest, str, int]] = deque()
        self._next: IDelayedCall | None = None
        self._running: Deferred[None] | None = None
        self._stopped = True

    def start(self) -> None:
        if self._rate > 0 and self._stopped:
            self._stopped = False
            self._schedule(0)

    def stop(self) -> Deferred[None] | None:
        """Stop; the Deferred fires once a hash in the disk thread is done."""
        self._stopped = True
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        return self._running

    def _schedule(self, delay: float) -> None:
        if not self._stopped:
            self._next = self._disk.reactor.callLater(delay, self._step)

    def _step(self) -> None:
        self._next = None
        self._running = Deferred.fromCoroutine(self._one())
        self._running.addErrback(lambda failure: log.failure("Scrub step failed", failure))

    async def _one(self) -> None:
        if not self._queue:
            blobs = await self._disk.run(lambda: list(self._disk.store.walk(self._kind)))
            self._queue.extend(blobs)
            if not self._queue:
                self._schedule(ROUND_PAUSE)
                return
        digest, path, size = self._queue.popleft()
        good = await self._disk.run(self._check, path, digest)
        if not good and not await self._quarantine(digest):
            self._schedule(0)  # evicted meanwhile: costs nothing
            return
        self._on_scrubbed(size)
        self._schedule(size / self._rate if self._queue else max(size / self._rate, ROUND_PAUSE))

    async def _quarantine(self, digest: Digest) -> bool:
        """Whether the corrupt blob was still there, and is now quarantined."""
        moved = await quarantine(self._disk, self._capacity, digest, self._kind)
        if moved:
            self._on_corrupt(digest)
        return moved


async def quarantine(disk: Disk, capacity: Capacity, digest: Digest, kind: Kind = Kind.BLOB) -> bool:
    """
    Take an entry that failed its check out of the store: moved to
    C{quarantine/}, forgotten by the eviction policy and the database.
    Whether it was still there.
    """
    moved = await disk.run(disk.store.quarantine, kind, digest)
    if moved is None:
        return False
    capacity.forget([digest])
    await disk.metadata.forget(capacity.table, [str(digest)])
    what = "Blob {digest} did not match its digest" if kind is Kind.BLOB else "Entry {digest} failed its check"
    log.error(what + " on disk: moved to {path}; it will be fetched again", digest=str(digest), path=moved)
    return True
