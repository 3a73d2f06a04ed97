"""
Negative caching: what an upstream said it does not have (a 404) is
remembered for a short time, so a client asking for a missing tag,
repository or digest in a loop costs one upstream request per TTL, not one
per request.

Entries are keyed by everything the answer depended on (upstream,
repository, what was asked for, and for a tag the C{Accept} variant), so
one client's miss never stands for another name.  Memory is bounded: the
entries are kept least recently used first, up to a byte budget that
counts a fixed overhead for each, so their number is bounded too.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from ._errors import CacheError
from ._lru import SizedLRU

__all__ = ["NEGATIVE_BYTES", "NEGATIVE_DIGEST_TTL", "NEGATIVE_TTL", "NegativeCache", "NegativeKey"]

NEGATIVE_TTL = 30.0
"""Seconds a missing tag or repository is remembered: C{[cache] negative_ttl}."""

NEGATIVE_DIGEST_TTL = 5.0
"""Seconds a missing digest is remembered, shorter since a push may bring it: C{[cache] negative_digest_ttl}."""

NEGATIVE_BYTES = 4 << 20
"""The most memory the remembered 404s take."""

ENTRY_OVERHEAD = 256
"""Bytes counted for each entry beyond its strings: at most 16,384 entries in 4 MiB."""

NegativeKey = tuple[str, ...]
"""C{(upstream, repository, kind, reference)}: kind C{manifest}, C{blob} or C{tags}."""


@frozen
class _Missing:
    kind: type[CacheError]
    message: str
    expires: float
    size: int


class NegativeCache:
    """
    Upstream 404s, each until its TTL passes: C{ttl} for a tag or a
    repository, C{digest_ttl} for a digest; 0 remembers none.
    """

    def __init__(self, clock: IReactorTime, ttl: float = NEGATIVE_TTL, digest_ttl: float = NEGATIVE_DIGEST_TTL,
                 max_bytes: int = NEGATIVE_BYTES) -> None:
        self._clock = clock
        self._ttl = ttl
        self._digest_ttl = digest_ttl
        self._kept: SizedLRU[NegativeKey, _Missing] = SizedLRU(max_bytes, lambda missing: missing.size)

    def __len__(self) -> int:
        return len(self._kept)

    def check(self, key: NegativeKey) -> None:
        """
        Raise the error remembered for C{key} (a new one, with the same
        type and message), if its TTL has not passed.
        """
        missing = self._kept.get(key)
        if missing is None:
            return
        if self._clock.seconds() >= missing.expires:
            self._kept.drop(key)
            return
        raise missing.kind(missing.message)

    def remember(self, key: NegativeKey, error: CacheError, by_digest: bool) -> None:
        """
        The upstream answered C{key} with a 404, which C{error} tells;
        C{by_digest}: C{key} names a digest.
        """
        ttl = self._digest_ttl if by_digest else self._ttl
        if ttl <= 0:
            return
        message = str(error)
        size = ENTRY_OVERHEAD + len(message) + sum(len(part) for part in key)
        self._kept.put(key, _Missing(type(error), message, self._clock.seconds() + ttl, size))
