"""
A memory cache bounded by bytes: least recently used out first.  The tag
list cache and the hot manifests share it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SizedLRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SizedLRU(Generic[K, V]):
    """
    At most C{max_bytes} of values, as C{size} measures them; a value of
    more than C{largest} bytes is not kept at all.
    """

    def __init__(self, max_bytes: int, size: Callable[[V], int], largest: int | None = None) -> None:
        self._max_bytes = max_bytes
        self._largest = max_bytes if largest is None else largest
        self._size = size
        self._kept: OrderedDict[K, V] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: K) -> V | None:
        value = self._kept.get(key)
        if value is not None:
            self._kept.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Keep C{value} under C{key}, replacing what was there."""
        self.drop(key)
        size = self._size(value)
        if size > self._largest:
            return
        self._kept[key] = value
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, old = self._kept.popitem(last=False)
            self._bytes -= self._size(old)

    def drop(self, key: K) -> None:
        old = self._kept.pop(key, None)
        if old is not None:
            self._bytes -= self._size(old)
