"""
Housekeeping: recovery at start-up, then expiry and eviction on a timer.

Recovery makes SQLite and the files agree: rows whose file is gone are
dropped; files without a row (a crash between the rename and the insert)
are re-hashed and adopted, or removed if they do not verify.  Then the
eviction policy is loaded, oldest access first.

Each pass of the janitor writes the batched access times, expires blobs
not read for C{blob_ttl}, drops tag rows past their retention, removes
temp files of downloads abandoned in this very process or left by a dead one (no process holds them:
L{Store.remove_unused}) and the lock files dead holders left, and evicts down to
C{max_size} if the limit was lowered.  The scans and deletes run in the
disk thread, so the reactor keeps serving meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from attrs import define
from twisted.logger import Logger

from .._spec._reference import Digest
from ._capacity import Capacity
from ._disk import Disk
from ._key_locks import KeyLocks
from ._store import Kind, Store

__all__ = ["Janitor", "Report", "TAG_RETENTION", "verify_file"]

log = Logger()

T = TypeVar("T")

TAG_RETENTION = 30 * 86400.0
"""
How long a tag row outlives its last revalidation.  Expired tags are kept
this long (not just C{tag_ttl}) so stale-if-error can still serve them
while an upstream is down.
"""

ABANDONED_AFTER = 3600.0
"""A temp file untouched this long belongs to no live download."""


@define
class Report:
    """What one pass freed."""

    expired: int = 0
    expired_bytes: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    temp_removed: int = 0
    tags_removed: int = 0
    manifests_removed: int = 0
    dropped_rows: int = 0
    adopted: int = 0
    removed_unverified: int = 0


def verify_file(path: str, digest: Digest) -> bool:
    """
    Whether the file at C{path} hashes to C{digest}.  Blocking.
    """
    hasher = digest.hasher()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
    except FileNotFoundError:
        return False
    return hasher.hexdigest() == digest.encoded


class Janitor:
    def __init__(
        self,
        disk: Disk,
        capacity: Capacity,
        blob_ttl: float | None,
        live_temp_files: Callable[[], Iterable[str]] = lambda: (),
        manifest_ttl: float | None = None,
        manifest_accesses: Callable[[], dict[str, float]] = dict,
        on_manifests_removed: Callable[[list[str]], None] = lambda digests: None,
    ) -> None:
        """
        @param manifest_ttl: a manifest no tag or stored index refers to is
            removed once unread for this long; C{None}: never.
        @param manifest_accesses: takes the manifest reads since the last
            pass (digest to time), to be written in a batch.
        """
        self._disk = disk
        self._store = disk.store
        self._metadata = disk.metadata
        self._capacity = capacity
        self._blob_ttl = blob_ttl
        self._live_temp_files = live_temp_files
        self._manifest_ttl = manifest_ttl
        self._manifest_accesses = manifest_accesses
        self._on_manifests_removed = on_manifests_removed
        self.recovered = False

    async def recover(self) -> Report:
        """
        Reconcile the database with the files, then load the policy.
        """
        report = Report()
        files = await self._disk.run(_scan, self._store)
        rows = {row.digest: row for row in await self._metadata.blobs()}
        missing = [digest for digest in rows if digest not in files]
        if missing:
            await self._metadata.delete_blobs(missing)
            report.dropped_rows = len(missing)
        now = time.time()
        for text, size in files.items():
            if text in rows:
                continue
            digest = Digest.parse(text)
            path = self._store.path(Kind.BLOB, digest)
            if await self._disk.run(verify_file, path, digest):
                await self._metadata.put_blob(text, size, now)
                report.adopted += 1
                # Not committed(): that would take the reservation of a
                # download whose rename this scan saw before its commit
                # was counted (recovery runs beside the first downloads).
                self._capacity.load([(digest, size, False)])
            else:
                await self._disk.run(self._store.remove, Kind.BLOB, digest)
                report.removed_unverified += 1
        ordered = sorted((row for row in rows.values() if row.digest in files), key=lambda row: row.last_access)
        self._capacity.load((Digest.parse(row.digest), files[row.digest], row.hits > 1) for row in ordered)
        self.recovered = True
        if missing or report.adopted or report.removed_unverified:
            log.info(
                "Recovered the store: {dropped} rows without files dropped, {adopted} files adopted,"
                " {removed} unverifiable files removed",
                dropped=report.dropped_rows, adopted=report.adopted, removed=report.removed_unverified,
            )
        return report

    async def run(self, evict_to: int | None = None) -> Report:
        """
        One pass.  C{evict_to} forces eviction down to that many bytes.
        """
        report = Report()
        accesses = self._capacity.take_accesses()
        if accesses:
            await self._metadata.touch_blobs(accesses)
        now = time.time()
        if self._blob_ttl is not None:
            # A pinned closure, or an image being pulled, is never expired.
            protected = await self._capacity.protected()
            expired = [
                (Digest.parse(row.digest), row.size)
                for row in await self._metadata.blobs()
                if now - max(row.last_access, accesses.get(row.digest, (0.0, 0))[0]) > self._blob_ttl
                and Digest.parse(row.digest) not in protected
            ]
            await self._capacity.delete([digest for digest, _ in expired])
            report.expired = len(expired)
            report.expired_bytes = sum(size for _, size in expired)
        report.tags_removed = await self._metadata.expire_tags(now - TAG_RETENTION)
        read = self._manifest_accesses()
        if read:
            await self._metadata.touch_manifests(read)
        if self._manifest_ttl is not None:
            report.manifests_removed = await self._expire_manifests(now - self._manifest_ttl)
        report.temp_removed = await self._disk.run(
            _remove_abandoned, self._store, set(self._live_temp_files()), now - ABANDONED_AFTER
        )
        await self._disk.run(KeyLocks(self._store.root).sweep)
        # The budget is every kind's (blobs, git, files): so is eviction.
        limit = self._capacity.max_size
        target = evict_to if evict_to is not None else limit
        if target is not None and self._capacity.budget.size > target:
            report.evicted, report.evicted_bytes = await self._capacity.evict(target)
        return report


    async def _expire_manifests(self, before: float) -> int:
        """
        Manifests whose tags (kept 30 days past their last revalidation)
        and referencing indexes are gone, unread since C{before}: nothing
        pulls them by name any more.  An index goes first; its children
        follow on a later pass.
        """
        digests = await self._metadata.unreferenced_manifests(before)
        if not digests:
            return 0
        await self._disk.run(_remove_manifests, self._store, digests)
        await self._metadata.forget("manifests", digests)
        self._on_manifests_removed(digests)
        return len(digests)


def _remove_manifests(store: Store, digests: list[str]) -> None:
    for digest in digests:
        store.remove(Kind.MANIFEST, Digest.parse(digest))


def _scan(store: Store) -> dict[str, int]:
    return {str(digest): size for digest, _, size in store.walk(Kind.BLOB)}


def _remove_abandoned(store: Store, live: set[str], before: float) -> int:
    removed = 0
    for entry in store.temp_files():
        if entry.path in live:
            continue
        try:
            if entry.stat().st_mtime < before and store.remove_unused(entry):
                removed += 1
        except FileNotFoundError:
            pass
    return removed
