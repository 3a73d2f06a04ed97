"""
What the cache holds, as the admin API lists it, and what a purge
removes: query functions run on the metadata database's thread
(L{Database.read}).

Repositories are named C{upstream/repo} (C{docker.io/library/alpine}):
the C{sources} table says which repositories each blob came from, the
C{tags} table which manifest each tag names.  A blob shared with a
repository a purge does not name stays; so does a manifest another
tag still names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from attrs import frozen

__all__ = ["PurgePlan", "blobs", "plan_purge", "repositories", "tags"]

LIST_LIMIT = 10000
"""The most rows one listing gives: the API's answer stays bounded."""


def repositories(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every repository with cached blobs or tags: its blobs, bytes, tags and last use, biggest first."""
    sizes = {
        (upstream, repo): (count, size, last)
        for upstream, repo, count, size, last in db.execute(
            "SELECT s.upstream, s.repo, count(*), sum(b.size), max(b.last_access) FROM sources s"
            " JOIN blobs b ON b.digest = s.digest GROUP BY s.upstream, s.repo")
    }
    tag_counts = {
        (upstream, repo): (count, checked)
        for upstream, repo, count, checked in db.execute(
            "SELECT upstream, repo, count(*), max(checked_at) FROM tags GROUP BY upstream, repo")
    }
    rows = []
    for key in sizes.keys() | tag_counts.keys():
        count, size, last = sizes.get(key, (0, 0, None))
        tag_count, checked = tag_counts.get(key, (0, None))
        used = max((t for t in (last, checked) if t is not None), default=None)
        rows.append({"repository": f"{key[0]}/{key[1]}", "upstream": key[0], "repo": key[1], "blobs": count,
                     "bytes": size or 0, "tags": tag_count, "last_used": used})
    rows.sort(key=lambda row: (-row["bytes"], row["repository"]))
    return rows[:LIST_LIMIT]


def tags(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every cached tag: its repository, the manifest it names, and when it was last revalidated."""
    return [
        {"repository": f"{upstream}/{repo}", "tag": tag, "digest": digest, "checked_at": checked}
        for upstream, repo, tag, digest, checked in db.execute(
            "SELECT upstream, repo, tag, digest, checked_at FROM tags ORDER BY upstream, repo, tag LIMIT ?",
            (LIST_LIMIT,))
    ]


def blobs(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """The cached blobs, biggest first: size, hits, last use, and the repositories they came from."""
    sources: dict[str, list[str]] = {}
    for digest, upstream, repo in db.execute("SELECT digest, upstream, repo FROM sources"):
        sources.setdefault(digest, []).append(f"{upstream}/{repo}")
    return [
        {"digest": digest, "bytes": size, "hits": hits, "created_at": created, "last_used": last,
         "repositories": sorted(sources.get(digest, []))}
        for digest, size, hits, created, last in db.execute(
            "SELECT digest, size, hits, created_at, last_access FROM blobs ORDER BY size DESC LIMIT ?",
            (LIST_LIMIT,))
    ]


@frozen
class PurgePlan:
    """What one purge removes: tag rows, manifests, blobs."""

    tags: tuple[tuple[str, str, str], ...]
    """(upstream, repo, tag)"""
    manifests: tuple[str, ...]
    blobs: tuple[str, ...]


def plan_purge(matches: Callable[[str], bool], tag: str | None = None,
               digest: str | None = None) -> Callable[[sqlite3.Connection], PurgePlan]:
    """
    The query that plans a purge of the repositories whose C{upstream/repo}
    C{matches}: with C{tag}, that tag alone (and its manifest, if no other
    tag names it); with C{digest}, that manifest or blob; else all of them:
    their tags, the manifests only those tags name, and the blobs that came
    from them alone.
    """

    def plan(db: sqlite3.Connection) -> PurgePlan:
        if digest is not None:
            return _plan_digest(db, digest)
        doomed = [
            (upstream, repo, name, manifest)
            for upstream, repo, name, manifest in db.execute("SELECT upstream, repo, tag, digest FROM tags")
            if matches(f"{upstream}/{repo}") and (tag is None or name == tag)
        ]
        keys = {(upstream, repo, name) for upstream, repo, name, _ in doomed}
        still_named = {
            manifest for upstream, repo, name, manifest in db.execute("SELECT upstream, repo, tag, digest FROM tags")
            if (upstream, repo, name) not in keys
        }
        manifests = sorted({manifest for *_, manifest in doomed} - still_named)
        blob_digests: list[str] = []
        if tag is None:
            owners: dict[str, list[bool]] = {}
            for blob, upstream, repo in db.execute(
                    "SELECT s.digest, s.upstream, s.repo FROM sources s JOIN blobs b ON b.digest = s.digest"):
                owners.setdefault(blob, []).append(matches(f"{upstream}/{repo}"))
            blob_digests = sorted(blob for blob, matched in owners.items() if all(matched))
        return PurgePlan(tuple(sorted(keys)), tuple(manifests), tuple(blob_digests))

    return plan


def _plan_digest(db: sqlite3.Connection, digest: str) -> PurgePlan:
    if db.execute("SELECT 1 FROM manifests WHERE digest=?", (digest,)).fetchone() is not None:
        named = tuple(sorted(db.execute("SELECT upstream, repo, tag FROM tags WHERE digest=?", (digest,))))
        return PurgePlan(named, (digest,), ())
    if db.execute("SELECT 1 FROM blobs WHERE digest=?", (digest,)).fetchone() is not None:
        return PurgePlan((), (), (digest,))
    return PurgePlan((), (), ())
