"""
What names an entry of the cache, and what decides that its bytes may be
kept.

The fetch core is protocol-neutral: an entry is named by a L{Key}, which a
front-end computes (an OCI digest names its content; git would name a
response by a hash of its request), and each key makes the L{Verifier}
that its bytes must pass before they are committed.  For a digest that is
SHA-256 and the length; for other protocols their own check (a pack's
trailer, a package index's checksum).  Nothing partial, ever, holds for
every key kind, because the core commits nothing a verifier refused.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from .._storage._store import StoreKey

__all__ = ["Key", "Verifier"]


class Verifier(Protocol):
    """
    Fed every byte of a body in order (in the disk thread, so it may be
    CPU-heavy), then asked whether the body is the entry.
    """

    def update(self, data: bytes) -> None: ...

    def mismatch(self) -> str | None:
        """
        After the last byte: C{None} when the bytes are the entry's, or
        why they are not (a message safe to show).
        """


class Key(StoreKey, Hashable, Protocol):
    """
    The name of an entry.  C{algorithm} and C{encoded} name its file in
    the store (a directory and a file name: the key's constructor must
    have validated both against a grammar that cannot escape a directory).
    """

    def verifier(self) -> Verifier:
        """A new verifier for one body claiming to be this entry."""
