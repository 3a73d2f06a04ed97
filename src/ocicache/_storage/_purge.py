"""
Purging what the operator names (the admin API's C{POST /admin/purge}):
the tags, manifests and blobs a L{PurgePlan} lists, removed as expiry and
eviction remove them (files on the disk pool, then the rows), except
the blobs a pin or a pull in progress protects, which stay and are
reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import frozen

from .._spec._reference import Digest
from ._capacity import Capacity
from ._catalog import PurgePlan
from ._disk import Disk
from ._store import Kind, Store

__all__ = ["PurgeReport", "Purger"]


@frozen
class PurgeReport:
    tags: int
    manifests: int
    blobs: int
    bytes: int
    kept: tuple[str, ...]
    """Blobs kept: pinned, or part of an image being pulled."""

    def as_json(self) -> dict[str, Any]:
        return {"tags": self.tags, "manifests": self.manifests, "blobs": self.blobs, "bytes": self.bytes,
                "kept": list(self.kept)}


class Purger:
    def __init__(self, disk: Disk, capacity: Capacity, on_manifests_removed: Callable[[list[str]], None]) -> None:
        self._disk = disk
        self._capacity = capacity
        self._on_manifests_removed = on_manifests_removed

    async def purge(self, plan: PurgePlan) -> PurgeReport:
        metadata = self._disk.metadata
        for upstream, repo, tag in plan.tags:
            await metadata.delete_tag(upstream, repo, tag)
        if plan.manifests:
            manifests = list(plan.manifests)
            await self._disk.run(_remove_manifests, self._disk.store, manifests)
            await metadata.forget("manifests", manifests)
            self._on_manifests_removed(manifests)
        protected = await self._capacity.protected()
        doomed = [Digest.parse(blob) for blob in plan.blobs]
        kept = tuple(sorted(str(digest) for digest in doomed if digest in protected))
        removable = [digest for digest in doomed if digest not in protected]
        size = sum(self._capacity.policy.size_of(digest) or 0 for digest in removable)
        await self._capacity.delete(removable)
        return PurgeReport(len(plan.tags), len(plan.manifests), len(removable), size, kept)


def _remove_manifests(store: Store, digests: list[str]) -> None:
    for digest in digests:
        store.remove(Kind.MANIFEST, Digest.parse(digest))
