"""
Tags and manifests shared by the processes on one store
(L{ocicache._oci._manifest_fleet.SharedManifests}), for a daemon not in a
fleet: the store itself is what they share.

What a tag resolves to and when it was last checked against the upstream
is the C{tags} table, which every process reads and the manifest service
writes; a manifest is the store's file.  So sharing an answer needs no
write of its own, and what this adds is the turn: while one process asks
the upstream about a tag or a digest, the others asked about it meanwhile
wait for its answer (the row it writes) rather than each asking too, so a
burst across the processes costs one C{HEAD} per C{tag_ttl}.  A turn is a
C{flock}ed file (L{ocicache._storage._turns}): a process that dies while
asking lets go of it with its life.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from .._spec._reference import Digest
from .._storage._disk import Disk
from .._storage._metadata import MetadataUnavailable
from .._storage._store import Kind
from .._storage._turns import Turns
from ._manifest_fleet import SharedTag, no_turn

__all__ = ["StoreManifests"]

log = Logger()


class StoreManifests:
    def __init__(self, disk: Disk) -> None:
        self._disk = disk
        self._turns = Turns(disk.store.root)

    async def tag(self, upstream: str, repo: str, key: str) -> SharedTag | None:
        try:
            row = await self._disk.metadata.tag(upstream, repo, key)
            if row is None:
                return None
            media_type = await self._disk.metadata.manifest_media_type(row.digest)
        except MetadataUnavailable:
            return None
        if media_type is None:
            return None
        return SharedTag(Digest.parse(row.digest), media_type, row.checked_at)

    def put_tag(self, upstream: str, repo: str, key: str, tag: SharedTag, ttl: float) -> None:
        """The manifest service writes the row itself."""

    async def manifest(self, digest: Digest) -> tuple[str, bytes] | None:
        body = await self._disk.run(self._disk.store.read, Kind.MANIFEST, digest)
        if body is None:
            return None
        try:
            media_type = await self._disk.metadata.manifest_media_type(str(digest))
        except MetadataUnavailable:
            return None
        return None if media_type is None else (media_type, body)

    def put_manifest(self, digest: Digest, media_type: str, body: bytes) -> None:
        """The manifest service stores the file itself."""

    async def turn(self, upstream: str, repo: str, key: str) -> Callable[[], None] | None:
        try:
            lock = await self._disk.run(self._turns.take, f"{upstream}/{repo}:{key}")
        except OSError as e:
            log.warn("Cannot take a turn to ask {upstream} (asking all the same): {error}",
                     upstream=upstream, error=str(e))
            return no_turn
        if lock is None:
            return None

        def end() -> None:
            self._disk.run(lock.release).addErrback(
                lambda failure: log.warn("Could not end a turn: {error}", error=failure.getErrorMessage()))

        return end
