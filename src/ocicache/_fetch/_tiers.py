"""
The tiers every kind of entry has on one node: the local store, and the
downloads in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .._storage._store import Kind, Store
from ._fills import Fills
from ._key import Key
from ._result import CacheResult
from ._source import StoredFile
from ._walk import Found, Hit, Want

__all__ = ["InFlightTier", "StoreTier"]

K = TypeVar("K", bound=Key)


class StoreTier(Generic[K]):
    """
    Committed files: verified before they were renamed into place, opened
    once (the descriptor keeps reading if the file is evicted meanwhile).
    """

    def __init__(self, store: Store, kind: Kind, accessed: Callable[[K], None] = lambda key: None) -> None:
        self._store = store
        self._kind = kind
        self._accessed = accessed

    async def find(self, key: K) -> Found | None:
        size = self._store.size(self._kind, key)
        return Found(size) if size is not None else None

    async def open(self, key: K, want: Want, found: Found) -> Hit | None:
        stored = self._store.open(self._kind, key)
        if stored is None:
            return None
        return Hit(StoredFile(*stored), CacheResult.HIT, lambda: self._accessed(key))


class InFlightTier(Generic[K]):
    """
    A download another client started: joined, and read from its growing
    temp file up to what has been verified so far.
    """

    def __init__(self, fills: Fills[K]) -> None:
        self._fills = fills

    async def find(self, key: K) -> Found | None:
        download = self._fills.joinable(key)
        return Found(download.size) if download is not None else None

    async def open(self, key: K, want: Want, found: Found) -> Hit | None:
        download = self._fills.joinable(key)
        if download is None:
            return None
        return Hit(download.acquire(), CacheResult.COALESCED)
