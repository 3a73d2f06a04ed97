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

Several processes on one store (C{[server] workers}) remember together:
with the store's metadata, each 404 is also written to its C{negatives}
table, and a key this process does not remember is looked up there
before the upstream is asked, so the upstream sees one request per TTL
whichever process is asked.
"""

from __future__ import annotations

import json

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._storage._metadata import Metadata, MetadataUnavailable
from ._errors import CacheError
from ._lru import SizedLRU

log = Logger()

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
                 max_bytes: int = NEGATIVE_BYTES, shared: Metadata | None = None) -> None:
        """
        @param shared: the metadata of a store other processes share: what
            one remembers, the others find there.
        """
        self._shared = shared
        self._clock = clock
        self._ttl = ttl
        self._digest_ttl = digest_ttl
        self._kept: SizedLRU[NegativeKey, _Missing] = SizedLRU(max_bytes, lambda missing: missing.size)

    def __len__(self) -> int:
        return len(self._kept)

    async def check(self, key: NegativeKey) -> None:
        """
        Raise the error remembered for C{key} (a new one, with the same
        type and message), if its TTL has not passed: remembered here, or
        by another process on the store.
        """
        missing = self._kept.get(key)
        if missing is None and self._shared is not None:
            missing = await self._recall(key, self._shared)
        if missing is None:
            return
        if self._clock.seconds() >= missing.expires:
            self._kept.drop(key)
            return
        raise missing.kind(missing.message)

    async def _recall(self, key: NegativeKey, shared: Metadata) -> _Missing | None:
        """What another process remembered of C{key}, now remembered here too; C{None}: nothing."""
        try:
            row = await shared.negative(_text(key))
        except MetadataUnavailable:
            return None  # the upstream is asked, as if nobody remembered
        if row is None:
            return None
        kind_name, message, expires = row
        kind = _error_kind(kind_name)
        if kind is None or expires <= self._clock.seconds():
            return None
        missing = _Missing(kind, message, expires, ENTRY_OVERHEAD + len(message) + sum(len(part) for part in key))
        self._kept.put(key, missing)
        return missing

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
        expires = self._clock.seconds() + ttl
        self._kept.put(key, _Missing(type(error), message, expires, size))
        if self._shared is not None:
            self._shared.put_negative(_text(key), _kind_name(type(error)), message, expires,
                                      self._clock.seconds()).addErrback(_not_shared)


def _text(key: NegativeKey) -> str:
    """A key as the C{negatives} table holds it: unambiguous whatever its parts hold."""
    return json.dumps(list(key))


def _kind_name(kind: type[CacheError]) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _error_kind(name: str) -> type[CacheError] | None:
    """The error class of that name among those loaded (a row names nothing else)."""
    seen: set[type[CacheError]] = set()
    classes: list[type[CacheError]] = [CacheError]
    while classes:
        kind = classes.pop()
        if _kind_name(kind) == name:
            return kind
        for sub in kind.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                classes.append(sub)
    return None


def _not_shared(failure: Failure) -> None:
    # Remembered here all the same; another process asks the upstream once.
    log.debug("Could not share an upstream 404: {error}", error=failure.getErrorMessage())
