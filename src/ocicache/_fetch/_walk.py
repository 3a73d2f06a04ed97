"""
The lookup: walk the tiers in order (the local store, the downloads in
flight, the S3 bucket, ...), and on a miss start one fill per key however
many clients ask.

Every place an entry's bytes can come from is a L{Tier}; a front-end
chooses its tiers and their order, and what a miss does (L{Miss}: an
upstream fetch into a sink, wrapped in the fleet's claim).  The walk
proves access once per lookup (the front-end's C{authorize}), and never
starts a second fill of an entry whose first one ended while it walked
(L{Fills.changed}).  With L{HostFills}, a miss takes the key's lock first,
so that every process on the store makes one fill per key: a lookup that
finds the lock taken walks again, and the tier after the in-flight one
(L{ocicache._fetch._elsewhere}) follows that process's fill.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from attrs import evolve, frozen

from ._download import Download
from ._errors import FilledElsewhere, NotHere, StoreUnavailable
from ._fills import Fills
from ._host_fills import HostFills
from ._key import Key
from ._passthrough import PassThrough
from ._result import CacheResult
from ._source import Source

__all__ = ["Filling", "Found", "Hit", "Miss", "Tier", "TierWalk", "Want"]

K = TypeVar("K", bound=Key)
K_contra = TypeVar("K_contra", bound=Key, contravariant=True)

WALKS = 3
"""Walks of the tiers before a miss is a miss, when fills keep ending meanwhile."""


@frozen
class Want:
    """
    What a client asked for, as far as the tiers care.

    @ivar ranged: it asked for a C{Range}: a tier may then stream from the
        client's offset instead of filling from the start.
    @ivar refill: starts (or joins) this process's own fill of the entry,
        under its lock: how a tier following another process's fill takes
        it over when that process dies.  Set by the walk.
    """

    ranged: bool = False
    refill: Callable[[], Awaitable[Filling]] | None = None


@frozen
class Hit:
    """What a client will be sent: the bytes, and where they came from."""

    source: Source
    result: CacheResult
    accessed: Callable[[], None] = lambda: None
    """Told once the client may read it: the tier's recency bookkeeping."""


class Tier(Protocol[K_contra]):
    """
    One place an entry's bytes can come from.  C{find} is cheap and says
    whether the tier holds the entry; C{open} is asked only once the
    client proved it may read it, so that nobody makes a tier do work
    (an S3 download) for an entry it may not have.  C{None} from either:
    not here (or not reachable now); the walk goes on to the next tier.
    """

    async def find(self, key: K_contra) -> Found | None:
        """Whether this tier holds the entry, and its length if known."""

    async def open(self, key: K_contra, want: Want, found: Found) -> Hit | None:
        """The entry's bytes, which L{find} just found here."""


@frozen
class Found:
    """A tier holds the entry; C{size} is its length when known."""

    size: int | None


Filling = Download | PassThrough
"""A body on its way: into the store, or through memory when the store refuses."""

Miss = Callable[[], Awaitable[Filling]]
"""Starts the fill of an entry no tier holds: the upstream's body going into a sink."""


class TierWalk(Generic[K]):
    """
    The lookup of one kind of entry over its tiers.
    """

    def __init__(self, tiers: Sequence[Tier[K]], fills: Fills[K], host: HostFills[K] | None = None) -> None:
        """
        @param host: the key locks every process on the store sees; its
            L{ocicache._fetch._elsewhere.ElsewhereTier} belongs among
            C{tiers}, after the in-flight one.  C{None}: this process is
            alone on its store.
        """
        self._tiers = tuple(tiers)
        self.fills = fills
        self._host = host

    async def open(self, key: K, want: Want, authorize: Callable[[], Awaitable[None]], miss: Miss) -> Hit:
        """
        The entry's bytes: from the first tier that holds them, or from a
        fill, started by this call (L{CacheResult.MISS}: its upstream
        answer was the access proof) or joined.  C{authorize} runs once
        per lookup, before any tier opens the entry or a fill is joined.
        """
        locked = self._locked(key, miss)
        want = evolve(want, refill=lambda: self._refill(key, locked))
        authorized = False
        for _ in range(WALKS):
            hit, authorized = await self._walk(key, want, authorize, authorized)
            if hit is not None:
                return hit
            try:
                started, joined = await self._start(key, locked)
            except FilledElsewhere:
                continue  # another process took the lock first: follow it
            started.acquire()
            if not joined or authorized:
                return Hit(started, CacheResult.COALESCED if joined else CacheResult.MISS)
            try:
                await authorize()
            except BaseException:
                started.release()
                raise
            return Hit(started, CacheResult.COALESCED)
        raise StoreUnavailable(f"{key} is being filled by another process that keeps changing; try again")

    async def _walk(self, key: K, want: Want, authorize: Callable[[], Awaitable[None]], authorized: bool
                    ) -> tuple[Hit | None, bool]:
        """
        The first tier's hit, or C{None} (a miss); and whether C{authorize}
        has run.
        """
        for _ in range(WALKS):
            watch = self.fills.watch(key)
            try:
                for tier in self._tiers:
                    found = await tier.find(key)
                    if found is None:
                        continue
                    if not authorized:
                        await authorize()
                        authorized = True
                    hit = await tier.open(key, want, found)
                    if hit is not None:
                        hit.accessed()
                        return hit, authorized
                ended = self.fills.changed(key, watch)
            finally:
                self.fills.unwatch(key, watch)
            if ended is None:
                break
            await ended
        return None, authorized

    def _locked(self, key: K, miss: Miss) -> Miss:
        """C{miss}, under the key's lock when other processes may share the store."""
        host = self._host
        if host is None:
            return miss
        return lambda: host.locked(key, miss)

    async def _refill(self, key: K, locked: Miss) -> Filling:
        started, joined = await self._start(key, locked)
        return started

    async def _start(self, key: K, miss: Miss) -> tuple[Filling, bool]:
        """
        The fill of C{key}: started by this call, or joined.  A joined fill
        that a tier started and could not serve after all (L{NotHere})
        is not this lookup's failure: it starts its own.
        """
        for _ in range(WALKS - 1):
            starting, joined = self.fills.start(key, miss)
            try:
                return await starting, joined
            except FilledElsewhere:
                raise  # the walk follows the other process's fill
            except NotHere:
                if not joined:
                    raise
        starting, joined = self.fills.start(key, miss)
        return await starting, joined

    async def size(self, key: K, authorize: Callable[[], Awaitable[None]]) -> int | None:
        """
        The entry's length from the first tier that knows it (C{authorize}d),
        or C{None}: ask the upstream.
        """
        for tier in self._tiers:
            found = await tier.find(key)
            if found is not None and found.size is not None:
                await authorize()
                return found.size
        return None
