"""
Which repositories may read which stored content.

Stored content is addressed by digest alone, so one copy serves every
repository.  But a repository that has not shown it holds a digest must
not be served it: otherwise a private layer could be read through any
public repository's name.  A repository shows it once, through an upstream
C{HEAD} on that digest (distribution-spec "Checking if content exists in
the registry"), and the proof is remembered in the metadata database.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spec._reference import Digest
from .._storage._health import DiskHealth
from .._storage._metadata import Metadata, MetadataUnavailable
from .._upstream._client import Upstream

__all__ = ["RepoAccess", "SharedProofs"]

log = Logger()

MAX_ENTRIES = 100_000
"""Proofs remembered in memory; older ones are looked up in the database again."""

TTL = 24 * 3600.0
"""Seconds a proof is trusted from memory before the database is asked again."""


class SharedProofs(Protocol):
    """
    Proofs shared by a fleet of nodes (L{ocicache._fleet}): one node's
    upstream C{HEAD} or C{GET} spares the others theirs.  Best effort:
    C{has} answers C{False} when the shared store cannot be asked.
    """

    async def has(self, digest: str, upstream: str, repo: str) -> bool: ...

    def put(self, digest: str, upstream: str, repo: str) -> None: ...


class RepoAccess:
    """
    Remembers which C{(digest, upstream, repo)} triples are proven.
    """

    def __init__(self, metadata: Metadata, clock: IReactorTime, max_entries: int = MAX_ENTRIES,
                 ttl: float = TTL, health: DiskHealth | None = None, shared: SharedProofs | None = None) -> None:
        self._metadata = metadata
        self._shared = shared
        self._health = health if health is not None else DiskHealth()
        self._clock = clock
        self._max_entries = max_entries
        self._ttl = ttl
        # The proofs seen lately, oldest first: a bounded memo of the
        # database, which keeps them all.
        self._known: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def _remember(self, key: tuple[str, str, str]) -> None:
        self._known[key] = self._clock.seconds()
        self._known.move_to_end(key)
        while len(self._known) > self._max_entries:
            self._known.popitem(last=False)

    def _remembered(self, key: tuple[str, str, str]) -> bool:
        seen = self._known.get(key)
        if seen is None:
            return False
        if self._clock.seconds() - seen > self._ttl:
            del self._known[key]
            return False
        return True

    def note(self, upstream: Upstream, repo: str, digest: Digest) -> None:
        """
        C{repo} just served C{digest}: remember it, in memory now and on
        disk in the background.
        """
        key = (str(digest), upstream.name, repo)
        if not self._remembered(key):
            self._remember(key)
            self._metadata.put_source(*key).addErrback(self._failed)
            if self._shared is not None:
                self._shared.put(*key)

    async def record(self, upstream: Upstream, repo: str, digest: Digest) -> None:
        key = (str(digest), upstream.name, repo)
        self._remember(key)
        if self._shared is not None:
            self._shared.put(*key)
        await self._metadata.put_source(*key)  # the caller handles a failing disk

    async def check(
        self,
        upstream: Upstream,
        repo: str,
        digest: Digest,
        prove: Callable[[], Awaitable[None]],
    ) -> None:
        """
        Return if C{repo} may read C{digest}; raise the upstream's refusal
        (an L{ocicache._upstream._errors.UpstreamError} or a not-found
        error) if it may not.
        """
        key = (str(digest), upstream.name, repo)
        if self._remembered(key):
            return
        if not await self._metadata.has_source(*key):
            if self._shared is not None and await self._shared.has(*key):
                # Another node of the fleet proved it: keep it here too.
                self._metadata.put_source(*key).addErrback(self._failed)
            else:
                await prove()
                self.note(upstream, repo, digest)
                return
        self._remember(key)

    def _failed(self, failure: Failure) -> None:
        # The proof stays in memory; the database missing it only costs
        # one upstream HEAD after a restart.
        if failure.check(OSError, MetadataUnavailable) and failure.value is not None:
            self._health.failed(failure.value)
        else:
            log.failure("Could not record a blob source", failure)
