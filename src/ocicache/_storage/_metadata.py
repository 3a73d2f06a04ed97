"""
What ocicache knows about the bytes it stores: tag mappings, manifest media
types, blob sizes and last access times, in SQLite inside C{cache.dir}.

The files under C{blobs/} are the truth for blob bytes; this database only
describes them.  All SQLite work runs on one dedicated thread, which owns
the connection, so the reactor never waits on the disk for it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["BlobRow", "Metadata", "TagRow"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    checked_at REAL NOT NULL,
    PRIMARY KEY (upstream, repo, tag)
);
CREATE TABLE IF NOT EXISTS manifests (
    digest TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sources (
    digest TEXT NOT NULL,
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    PRIMARY KEY (digest, upstream, repo)
);
"""


@frozen
class TagRow:
    digest: str
    checked_at: float


@frozen
class BlobRow:
    digest: str
    size: int
    created_at: float
    last_access: float
    hits: int


class Metadata:
    """
    The metadata database.  Every method returns a L{Deferred} and runs on
    the database thread.
    """

    def __init__(self, path: str, reactor: IReactorThreads) -> None:
        self.path = path
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="ocicache-metadata")
        self._db: sqlite3.Connection | None = None

    # -- life cycle

    def open(self) -> Deferred[None]:
        self._pool.start()
        return self._run(self._open)

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        self._db = db

    def close(self) -> Deferred[None]:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def stop_thread(result: object) -> object:
            self._pool.stop()
            return result

        return self._run(close).addBoth(stop_thread)  # type: ignore[return-value]

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def _run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)  # type: ignore[arg-type]

    def _execute(self, sql: str, *args: Any) -> Deferred[list[tuple[Any, ...]]]:
        def execute() -> list[tuple[Any, ...]]:
            assert self._db is not None, "metadata database is closed"
            return self._db.execute(sql, args).fetchall()

        return self._run(execute)

    def _executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> Deferred[None]:
        rows = list(rows)

        def executemany() -> None:
            assert self._db is not None, "metadata database is closed"
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(sql, rows)

        return self._run(executemany)

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

        def expire() -> int:
            assert self._db is not None, "metadata database is closed"
            return self._db.execute("DELETE FROM tags WHERE checked_at < ?", (before,)).rowcount

        return await self._run(expire)

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

    # -- blobs

    def put_blob(self, digest: str, size: int, now: float) -> Deferred[Any]:
        return self._execute(
            "INSERT INTO blobs (digest, size, created_at, last_access) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (digest) DO UPDATE SET size=excluded.size",
            digest, size, now, now,
        )

    def touch_blobs(self, accesses: dict[str, tuple[float, int]]) -> Deferred[None]:
        """
        Record a batch of accesses: digest to (last access, new hits).
        """
        return self._executemany(
            "UPDATE blobs SET last_access=max(last_access, ?), hits=hits+? WHERE digest=?",
            ((when, hits, digest) for digest, (when, hits) in accesses.items()),
        )

    def delete_blobs(self, digests: Iterable[str]) -> Deferred[None]:
        return self._executemany(
            "DELETE FROM blobs WHERE digest=?", ((digest,) for digest in digests)
        )

    async def blobs(self) -> list[BlobRow]:
        rows = await self._execute(
            "SELECT digest, size, created_at, last_access, hits FROM blobs"
        )
        return [BlobRow(*row) for row in rows]

    async def manifest_digests(self) -> list[str]:
        return [str(row[0]) for row in await self._execute("SELECT digest FROM manifests")]

    def forget(self, kind: str, digests: list[str]) -> Deferred[None]:
        """
        Drop every row about C{digests} of C{kind} (C{"blobs"} or
        C{"manifests"}): they are gone and will be fetched again.
        """

        def forget() -> None:
            assert self._db is not None, "metadata database is closed"
            table = {"blobs": "blobs", "manifests": "manifests"}[kind]
            with self._db:
                self._db.execute("BEGIN")
                for digest in digests:
                    self._db.execute(f"DELETE FROM {table} WHERE digest=?", (digest,))
                    self._db.execute("DELETE FROM sources WHERE digest=?", (digest,))
                    self._db.execute("DELETE FROM tags WHERE digest=?", (digest,))

        return self._run(forget)

    async def summary(self, top: int = 10) -> dict[str, Any]:
        """
        Tag count, the biggest repositories by blob bytes, and the oldest
        entry's creation time, for C{ocicache stats}.
        """

        def summary() -> dict[str, Any]:
            assert self._db is not None, "metadata database is closed"
            db = self._db
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

        return await self._run(summary)

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
