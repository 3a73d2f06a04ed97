"""
What ocicache knows about the bytes it stores: tag mappings, manifest media
types, blob sizes and last access times, pins and quota, as queries on the
metadata database (L{ocicache._storage._database}, which owns its life).

The files under C{blobs/} are the truth for blob bytes; this database only
describes them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred

from ._database import (
    BLOB_TABLES,
    BUSY_TIMEOUT,
    Database,
    MetadataCorrupt,
    MetadataLocked,
    MetadataUnavailable,
    Rebuilt,
    blob_table,
)

__all__ = [
    "BLOB_TABLES",
    "BUSY_TIMEOUT",
    "BlobRow",
    "CHANGES_KEPT",
    "Change",
    "EntryChanges",
    "Metadata",
    "MetadataCorrupt",
    "MetadataLocked",
    "MetadataUnavailable",
    "PinRow",
    "QuotaRow",
    "QuotaValues",
    "Rebuilt",
    "TagRow",
]

CHANGES_KEPT = 100_000
"""
Changes of stored entries the log keeps at least; a process further behind
than that reads the tables whole instead (L{Metadata.entry_changes}).
"""


@frozen
class Change:
    """A row of C{table} added or resized to C{size} bytes, or removed (C{size} C{None})."""

    table: str
    key: str
    size: int | None


@frozen
class EntryChanges:
    """
    The changes since the last look (C{changes}), or else every row
    (C{rows}: table to key and size); C{last} is the change they are as of.
    """

    last: int
    changes: list[Change] | None
    rows: dict[str, list[tuple[str, int]]] | None


def _last_change(db: sqlite3.Connection) -> int:
    """The sequence number of the last change ever logged (AUTOINCREMENT keeps it)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return int(row[0]) if row is not None else 0


@frozen
class TagRow:
    digest: str
    checked_at: float


@frozen
class PinRow:
    """
    A pin: C{reference} (a tag, followed as it moves, or a digest) of
    C{upstream}/C{repo}, for C{platforms} (comma-separated), last resolved
    to C{digest}; C{size} is the declared bytes of the blobs it holds.
    """

    upstream: str
    repo: str
    reference: str
    platforms: str
    digest: str
    pinned_at: float
    size: int


@frozen
class QuotaRow:
    """One upstream's pull-equivalents and the rate-limit values it last sent."""

    upstream: str
    pulls_made: int
    pulls_saved: int
    limit: int | None
    remaining: int | None
    window: float | None
    source: str | None
    observed_at: float | None
    limited_until: float | None


class QuotaValues(Protocol):
    """The rate-limit values kept (the upstream client's C{Quota})."""

    @property
    def limit(self) -> int | None: ...
    @property
    def remaining(self) -> int | None: ...
    @property
    def window(self) -> float | None: ...
    @property
    def source(self) -> str | None: ...
    @property
    def observed_at(self) -> float | None: ...
    @property
    def limited_until(self) -> float | None: ...


@frozen
class BlobRow:
    digest: str
    size: int
    created_at: float
    last_access: float
    hits: int


class Metadata(Database):
    """
    The metadata database's queries.  Every method but L{open_now} returns
    a L{Deferred} (or is a coroutine) and runs on the database thread; a
    failure is a L{MetadataUnavailable}.
    """

    # -- tags

    async def tag(self, upstream: str, repo: str, tag: str) -> TagRow | None:
        rows = await self._execute(
            "SELECT digest, checked_at FROM tags WHERE upstream=? AND repo=? AND tag=?",
            upstream, repo, tag,
        )
        return TagRow(*rows[0]) if rows else None

    def put_tag(self, upstream: str, repo: str, tag: str, digest: str, checked_at: float) -> Deferred[Any]:
        return self._execute(
            "INSERT INTO tags (upstream, repo, tag, digest, checked_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (upstream, repo, tag) DO UPDATE SET digest=excluded.digest,"
            " checked_at=excluded.checked_at",
            upstream, repo, tag, digest, checked_at,
        )

    async def expire_tags(self, before: float) -> int:
        """
        Drop tag rows last revalidated before C{before}; return how many.
        """

        return await self._with_db(
            lambda db: db.execute("DELETE FROM tags WHERE checked_at < ?", (before,)).rowcount
        )

    def delete_tag(self, upstream: str, repo: str, tag: str) -> Deferred[Any]:
        return self._execute(
            "DELETE FROM tags WHERE upstream=? AND repo=? AND tag=?", upstream, repo, tag
        )

    # -- manifests

    async def manifest_media_type(self, digest: str) -> str | None:
        rows = await self._execute("SELECT media_type FROM manifests WHERE digest=?", digest)
        return str(rows[0][0]) if rows else None

    def put_manifest(self, digest: str, media_type: str, size: int, now: float) -> Deferred[Any]:
        return self._execute(
            "INSERT INTO manifests (digest, media_type, size, created_at, last_access)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET"
            " last_access=excluded.last_access",
            digest, media_type, size, now, now,
        )

    def delete_manifest(self, digest: str) -> Deferred[Any]:
        return self._execute("DELETE FROM manifests WHERE digest=?", digest)

    def put_children(self, parent: str, children: Iterable[str]) -> Deferred[None]:
        """An index or manifest list and the manifests it refers to."""
        return self._executemany(
            "INSERT OR IGNORE INTO manifest_children (parent, child) VALUES (?, ?)",
            ((parent, child) for child in children),
        )

    def touch_manifests(self, accesses: dict[str, float]) -> Deferred[None]:
        """Record a batch of manifest reads: digest to last access."""
        return self._executemany(
            "UPDATE manifests SET last_access=max(last_access, ?) WHERE digest=?",
            ((when, digest) for digest, when in accesses.items()),
        )

    async def unreferenced_manifests(self, before: float) -> list[str]:
        """
        Manifests last read before C{before} that no tag resolves to and no
        stored index or manifest list refers to: nothing pulls them by name
        any more.  A child becomes one only once its index is gone.
        """
        rows = await self._execute(
            "SELECT digest FROM manifests AS m WHERE m.last_access < ?"
            " AND NOT EXISTS (SELECT 1 FROM tags AS t WHERE t.digest = m.digest)"
            " AND NOT EXISTS (SELECT 1 FROM pin_manifests AS p WHERE p.manifest = m.digest)"
            " AND NOT EXISTS (SELECT 1 FROM manifest_children AS c JOIN manifests AS p ON p.digest = c.parent"
            " WHERE c.child = m.digest)",
            before,
        )
        return [str(row[0]) for row in rows]

    # -- blobs

    def put_blob(self, digest: str, size: int, now: float, table: str = "blobs") -> Deferred[Any]:
        return self._execute(
            f"INSERT INTO {blob_table(table)} (digest, size, created_at, last_access) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (digest) DO UPDATE SET size=excluded.size",
            digest, size, now, now,
        )

    def touch_blobs(self, accesses: dict[str, tuple[float, int]], table: str = "blobs") -> Deferred[None]:
        """
        Record a batch of accesses: digest to (last access, new hits).
        """
        return self._executemany(
            f"UPDATE {blob_table(table)} SET last_access=max(last_access, ?), hits=hits+? WHERE digest=?",
            ((when, hits, digest) for digest, (when, hits) in accesses.items()),
        )

    def delete_blobs(self, digests: Iterable[str], table: str = "blobs") -> Deferred[None]:
        """
        Forget evicted or expired blobs, and the access proofs for them: a
        repository proves it again (one upstream HEAD) if the blob comes
        back, and the C{sources} table does not grow without end.  A blob
        leaving only this disk, while the bucket still has it
        (C{table="blobs"} beside a C{bucket_blobs} row), keeps its proofs.
        """
        rows = [(digest,) for digest in digests]
        table = blob_table(table)
        other = "bucket_blobs" if table == "blobs" else "blobs"

        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(f"DELETE FROM {table} WHERE digest=?", rows)
                db.executemany(
                    f"DELETE FROM sources WHERE digest=? AND NOT EXISTS"
                    f" (SELECT 1 FROM {other} WHERE {other}.digest = sources.digest)", rows)

        return self._with_db(delete)

    async def blobs(self, table: str = "blobs") -> list[BlobRow]:
        rows = await self._execute(
            f"SELECT digest, size, created_at, last_access, hits FROM {blob_table(table)}"
        )
        return [BlobRow(*row) for row in rows]

    def entry_changes(self, seen: int | None, tables: Collection[str]) -> Deferred[EntryChanges]:
        """
        What the tables of stored entries named did since change C{seen}
        (L{ocicache._storage._database.CHANGES_SCHEMA}), whoever did it; or,
        when C{seen} is C{None} or the log no longer reaches back to it,
        every row of those tables as of one instant.  Prunes the log's
        oldest changes once it holds twice L{CHANGES_KEPT}.
        """
        names = sorted(blob_table(table) for table in tables)

        def read(db: sqlite3.Connection) -> EntryChanges:
            with db:
                # One snapshot: the rows and the change they are as of.
                db.execute("BEGIN")
                last = _last_change(db)
                oldest = db.execute("SELECT min(seq) FROM changes").fetchone()[0]
                gap = seen is None or seen > last or (seen < last and (oldest is None or oldest > seen + 1))
                if gap:
                    rows = {table: [(str(digest), int(size)) for digest, size in
                                    db.execute(f"SELECT digest, size FROM {table}")] for table in names}
                    result = EntryChanges(last, None, rows)
                else:
                    marks = ",".join("?" * len(names))
                    changes = [Change(str(table), str(digest), None if size is None else int(size))
                               for table, digest, size in db.execute(
                                   f"SELECT tbl, digest, size FROM changes WHERE seq > ? AND tbl IN ({marks})"
                                   " ORDER BY seq", (seen, *names))]
                    result = EntryChanges(last, changes, None)
            if oldest is not None and last - oldest >= 2 * CHANGES_KEPT:
                db.execute("DELETE FROM changes WHERE seq <= ?", (last - CHANGES_KEPT,))
            return result

        return self._with_db(read)

    async def negative(self, key: str) -> tuple[str, str, float] | None:
        """An upstream 404 another process remembered (L{ocicache._fetch._negative}): its error, message, expiry."""
        rows = await self._execute("SELECT kind, message, expires FROM negatives WHERE key=?", key)
        return (str(rows[0][0]), str(rows[0][1]), float(rows[0][2])) if rows else None

    def put_negative(self, key: str, kind: str, message: str, expires: float, now: float) -> Deferred[None]:
        """Remember an upstream 404 until C{expires}; those past their expiry go."""

        def put(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO negatives (key, kind, message, expires) VALUES (?, ?, ?, ?)",
                           (key, kind, message, expires))
                db.execute("DELETE FROM negatives WHERE expires <= ?", (now,))

        return self._with_db(put)

    async def manifest_digests(self) -> list[str]:
        return [str(row[0]) for row in await self._execute("SELECT digest FROM manifests")]

    def forget(self, kind: str, digests: list[str]) -> Deferred[None]:
        """
        Drop every row about C{digests} of C{kind} (C{"manifests"}, or a
        table of L{BLOB_TABLES}): they are gone and will be fetched again.
        """

        table = "manifests" if kind == "manifests" else blob_table(kind)

        def forget(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                for digest in digests:
                    db.execute(f"DELETE FROM {table} WHERE digest=?", (digest,))
                    db.execute("DELETE FROM manifest_children WHERE parent=?", (digest,))
                    db.execute("DELETE FROM manifest_blobs WHERE manifest=?", (digest,))
                    db.execute("DELETE FROM sources WHERE digest=?", (digest,))
                    db.execute("DELETE FROM tags WHERE digest=?", (digest,))

        return self._with_db(forget)

    async def summary(self, top: int = 10) -> dict[str, Any]:
        """
        Tag count, the biggest repositories by blob bytes, and the oldest
        entry's creation time, for C{ocicache stats}.
        """

        def summary(db: sqlite3.Connection) -> dict[str, Any]:
            tags = db.execute("SELECT count(*) FROM tags").fetchone()[0]
            repositories = [
                {"upstream": upstream, "repo": repo, "bytes": size, "blobs": count}
                for upstream, repo, size, count in db.execute(
                    "SELECT s.upstream, s.repo, sum(b.size), count(*) FROM sources s"
                    " JOIN blobs b ON b.digest = s.digest GROUP BY s.upstream, s.repo"
                    " ORDER BY sum(b.size) DESC LIMIT ?", (top,))
            ]
            oldest = db.execute(
                "SELECT min(t) FROM (SELECT min(created_at) AS t FROM blobs"
                " UNION ALL SELECT min(created_at) FROM manifests)"
            ).fetchone()[0]
            return {"tags": tags, "repositories": repositories, "oldest": oldest}

        return await self._with_db(summary)

    # -- each upstream's pull quota, for ocicache stats

    def add_quota(self, upstream: str, made: int, saved: int, quota: QuotaValues) -> Deferred[Any]:
        """
        Add C{made} and C{saved} pull-equivalents to C{upstream}'s totals,
        and keep the rate-limit values it last sent.
        """
        return self._execute(
            "INSERT INTO quota (upstream, pulls_made, pulls_saved, ratelimit_limit, ratelimit_remaining,"
            " ratelimit_window, ratelimit_source, observed_at, limited_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (upstream) DO UPDATE SET pulls_made = pulls_made + excluded.pulls_made,"
            " pulls_saved = pulls_saved + excluded.pulls_saved,"
            " ratelimit_limit = coalesce(excluded.ratelimit_limit, ratelimit_limit),"
            " ratelimit_remaining = coalesce(excluded.ratelimit_remaining, ratelimit_remaining),"
            " ratelimit_window = coalesce(excluded.ratelimit_window, ratelimit_window),"
            " ratelimit_source = coalesce(excluded.ratelimit_source, ratelimit_source),"
            " observed_at = coalesce(excluded.observed_at, observed_at),"
            " limited_until = coalesce(excluded.limited_until, limited_until)",
            upstream, made, saved, quota.limit, quota.remaining, quota.window, quota.source,
            quota.observed_at, quota.limited_until,
        )

    async def quota(self) -> list[QuotaRow]:
        """Every upstream's pull-equivalents and last rate-limit values, by name."""
        rows = await self._execute(
            "SELECT upstream, pulls_made, pulls_saved, ratelimit_limit, ratelimit_remaining, ratelimit_window,"
            " ratelimit_source, observed_at, limited_until FROM quota ORDER BY upstream"
        )
        return [QuotaRow(*row) for row in rows]

    # -- which upstream has shown us which blob

    async def has_source(self, digest: str, upstream: str, repo: str) -> bool:
        rows = await self._execute(
            "SELECT 1 FROM sources WHERE digest=? AND upstream=? AND repo=?",
            digest, upstream, repo,
        )
        return bool(rows)

    def put_source(self, digest: str, upstream: str, repo: str) -> Deferred[Any]:
        return self._execute(
            "INSERT OR IGNORE INTO sources (digest, upstream, repo) VALUES (?, ?, ?)",
            digest, upstream, repo,
        )

    # -- what an image manifest references, and the pins that hold closures

    def put_manifest_blobs(self, manifest: str, blobs: Iterable[tuple[str, int]]) -> Deferred[None]:
        """An image manifest and the blobs (config, layers) it refers to, with their declared sizes."""
        return self._executemany(
            "INSERT OR IGNORE INTO manifest_blobs (manifest, blob, size) VALUES (?, ?, ?)",
            ((manifest, blob, size) for blob, size in blobs),
        )

    def put_pin(self, upstream: str, repo: str, reference: str, platforms: str, digest: str,
                manifests: Iterable[str], now: float) -> Deferred[None]:
        """
        Pin C{reference}, resolved to C{digest}, holding C{manifests} (the
        top manifest and the platforms' ones): replaces what the pin held
        before, in one transaction, so a pin that follows its tag releases
        the old closure as it takes the new one.
        """
        members = [(upstream, repo, reference, manifest) for manifest in manifests]

        def put(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT INTO pins (upstream, repo, reference, platforms, digest, pinned_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (upstream, repo, reference) DO UPDATE SET"
                    " platforms=excluded.platforms, digest=excluded.digest",
                    (upstream, repo, reference, platforms, digest, now))
                db.execute("DELETE FROM pin_manifests WHERE upstream=? AND repo=? AND reference=?",
                           (upstream, repo, reference))
                db.executemany("INSERT OR IGNORE INTO pin_manifests (upstream, repo, reference, manifest)"
                               " VALUES (?, ?, ?, ?)", members)

        return self._with_db(put)

    def delete_pin(self, upstream: str, repo: str, reference: str) -> Deferred[bool]:
        """Release a pin; C{True} if there was one."""

        def delete(db: sqlite3.Connection) -> bool:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM pin_manifests WHERE upstream=? AND repo=? AND reference=?",
                           (upstream, repo, reference))
                return db.execute("DELETE FROM pins WHERE upstream=? AND repo=? AND reference=?",
                                  (upstream, repo, reference)).rowcount > 0

        return self._with_db(delete)

    async def pins(self) -> list[PinRow]:
        rows = await self._execute(
            "SELECT p.upstream, p.repo, p.reference, p.platforms, p.digest, p.pinned_at,"
            " (SELECT coalesce(sum(size), 0) FROM (SELECT DISTINCT b.blob, b.size FROM pin_manifests AS m"
            "  JOIN manifest_blobs AS b ON b.manifest = m.manifest WHERE m.upstream = p.upstream"
            "  AND m.repo = p.repo AND m.reference = p.reference))"
            " FROM pins AS p ORDER BY p.upstream, p.repo, p.reference"
        )
        return [PinRow(*row) for row in rows]

    async def pin_missing(self, upstream: str, repo: str, reference: str) -> int:
        """How many blobs the pin holds that the store does not (a fetch that failed, or was not kept)."""
        rows = await self._execute(
            "SELECT count(DISTINCT b.blob) FROM pin_manifests AS m JOIN manifest_blobs AS b"
            " ON b.manifest = m.manifest WHERE m.upstream = ? AND m.repo = ? AND m.reference = ?"
            " AND NOT EXISTS (SELECT 1 FROM blobs WHERE blobs.digest = b.blob)",
            upstream, repo, reference,
        )
        return int(rows[0][0])

    async def pinned_blobs(self, excluding: tuple[str, str, str] | None = None) -> dict[str, int]:
        """
        Every blob a pin holds, with its declared size; without the pin
        C{excluding} (upstream, repo, reference) when given.
        """
        rows = await self._execute(
            "SELECT DISTINCT b.blob, b.size FROM pin_manifests AS m JOIN manifest_blobs AS b"
            " ON b.manifest = m.manifest WHERE NOT (m.upstream = ? AND m.repo = ? AND m.reference = ?)",
            *(excluding or ("", "", "")),
        )
        return {str(blob): int(size) for blob, size in rows}

    async def protected_blobs(self, since: float, recent: Iterable[str]) -> list[str]:
        """
        The blobs eviction and expiry must leave: those a pin holds, and
        those of a manifest read at or after C{since}, by the database's
        last access or in C{recent} (reads not written to it yet).
        """
        rows = await self._execute(
            "SELECT DISTINCT blob FROM manifest_blobs WHERE manifest IN ("
            " SELECT manifest FROM pin_manifests"
            " UNION SELECT digest FROM manifests WHERE last_access >= ?"
            " UNION SELECT value FROM json_each(?))",
            since, json.dumps(list(recent)),
        )
        return [str(row[0]) for row in rows]
