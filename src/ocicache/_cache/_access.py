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

from collections.abc import Awaitable, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spec._reference import Digest
from .._storage._metadata import Metadata
from .._upstream._client import Upstream

__all__ = ["RepoAccess"]

log = Logger()


class RepoAccess:
    """
    Remembers which C{(digest, upstream, repo)} triples are proven.
    """

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata
        self._known: set[tuple[str, str, str]] = set()

    def note(self, upstream: Upstream, repo: str, digest: Digest) -> None:
        """
        C{repo} just served C{digest}: remember it, in memory now and on
        disk in the background.
        """
        key = (str(digest), upstream.name, repo)
        if key not in self._known:
            self._known.add(key)
            self._metadata.put_source(*key).addErrback(self._failed)

    async def record(self, upstream: Upstream, repo: str, digest: Digest) -> None:
        key = (str(digest), upstream.name, repo)
        self._known.add(key)
        await self._metadata.put_source(*key)

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
        if key in self._known:
            return
        if not await self._metadata.has_source(*key):
            await prove()
            self.note(upstream, repo, digest)
        self._known.add(key)

    def _failed(self, failure: Failure) -> None:
        log.failure("Could not record a blob source", failure)
