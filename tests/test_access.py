"""
Tests for L{ocicache._oci._access}: proofs are remembered in a bounded
memo in front of the database, so memory does not grow with weeks of
traffic, and a forgotten proof is found in the database again rather than
proved upstream again.
"""

from __future__ import annotations

from typing import Any, cast

import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from ocicache._oci._access import RepoAccess
from ocicache._spec._reference import Digest
from ocicache._storage._metadata import Metadata
from ocicache._upstream._client import Upstream


class _Sources:
    """The part of the metadata database that keeps proofs."""

    def __init__(self) -> None:
        self.rows: set[tuple[str, str, str]] = set()
        self.lookups = 0

    def has_source(self, digest: str, upstream: str, repo: str) -> Deferred[bool]:
        self.lookups += 1
        return succeed((digest, upstream, repo) in self.rows)

    def put_source(self, digest: str, upstream: str, repo: str) -> Deferred[None]:
        self.rows.add((digest, upstream, repo))
        return succeed(None)


class _Upstream:
    name = "docker.io"


def _digest(i: int) -> Digest:
    return Digest("sha256", f"{i:064x}")


@pytest_twisted.ensureDeferred
async def test_the_memo_is_bounded_and_falls_back_to_the_database() -> None:
    sources, clock = _Sources(), Clock()
    access = RepoAccess(cast(Metadata, sources), clock, max_entries=10, ttl=3600)
    upstream = cast(Upstream, _Upstream())
    proved: list[int] = []
    for i in range(50):
        async def prove(i: int = i) -> None:
            proved.append(i)

        await access.check(upstream, "library/a", _digest(i), prove)
    assert len(access._known) == 10
    assert proved == list(range(50))
    # The first proof left the memo, but not the database: no new proof.
    lookups = sources.lookups

    async def never() -> Any:
        raise AssertionError("proved again")

    await access.check(upstream, "library/a", _digest(0), never)
    assert sources.lookups == lookups + 1


@pytest_twisted.ensureDeferred
async def test_a_memo_entry_expires() -> None:
    sources, clock = _Sources(), Clock()
    access = RepoAccess(cast(Metadata, sources), clock, max_entries=10, ttl=60)
    upstream = cast(Upstream, _Upstream())

    async def prove() -> None:
        pass

    await access.check(upstream, "library/a", _digest(1), prove)
    lookups = sources.lookups
    await access.check(upstream, "library/a", _digest(1), prove)
    assert sources.lookups == lookups  # from memory
    clock.advance(61)
    await access.check(upstream, "library/a", _digest(1), prove)
    assert sources.lookups == lookups + 1  # asked the database again
