"""
How a lookup was answered: the C{result} label of the cache metrics and
the access log.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CacheResult"]


class CacheResult(StrEnum):
    HIT = "hit"
    """Served from the store."""
    MISS = "miss"
    """This request fetched it from the upstream."""
    COALESCED = "coalesced"
    """This request joined a fetch already in flight."""
    STALE = "stale"
    """
    The upstream failed (or no longer has it), so a tag's last known
    manifest, or a tag list's last page, was served as its stale policy allows.
    """
