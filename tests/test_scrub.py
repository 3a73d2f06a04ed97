"""
Unit tests of the background scrub (L{ocicache._storage._scrub}) over fakes
on a fake clock: a blob corrupted at rest is quarantined and forgotten, a
good one left; another kind of entry is checked by its own check, in its
own directory and table; the rate spaces the steps out.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed

from ocicache._spec._reference import Digest
from ocicache._storage._capacity import Capacity
from ocicache._storage._disk import Disk
from ocicache._storage._metadata import Metadata
from ocicache._storage._scrub import ROUND_PAUSE, Scrubber
from ocicache._storage._store import Kind, Store
from ocitest.fakes import Reactor, SyncPool, run


class Books:
    def __init__(self, table: str) -> None:
        self.table = table
        self.forgotten: list[Digest] = []

    def forget(self, digests: list[Digest]) -> None:
        self.forgotten.extend(digests)


class Rows:
    def __init__(self) -> None:
        self.forgotten: list[tuple[str, list[str]]] = []

    def forget(self, kind: str, digests: list[str]) -> Deferred[None]:
        self.forgotten.append((kind, digests))
        return succeed(None)


def _scrubber(clock: Reactor, store: Store, kind: Kind = Kind.BLOB, table: str = "blobs",
              check: Any = None) -> tuple[Scrubber, Books, Rows, list[Digest], list[int]]:
    rows = Rows()
    books = Books(table)
    disk = Disk(clock, store, cast(Metadata, rows), cast(Any, SyncPool()))
    corrupt: list[Digest] = []
    scrubbed: list[int] = []
    extra = {} if check is None else {"check": check}
    scrubber = Scrubber(disk, cast(Capacity, books), 1000, scrubbed.append, corrupt.append, kind=kind, **extra)
    return scrubber, books, rows, corrupt, scrubbed


def _digest(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def test_a_blob_corrupted_at_rest_is_quarantined_and_a_good_one_left(clock: Reactor, store: Store) -> None:
    good, bad = b"good layer", b"bad layer"
    store.write_small(Kind.BLOB, _digest(good), good)
    store.write_small(Kind.BLOB, _digest(bad), b"bit rot!!")
    scrubber, books, rows, corrupt, scrubbed = _scrubber(clock, store)
    scrubber.start()
    for _ in range(4):
        run(clock)
        clock.advance(ROUND_PAUSE)
    scrubber.stop()
    assert corrupt == [_digest(bad)] and books.forgotten == [_digest(bad)]
    assert rows.forgotten == [("blobs", [str(_digest(bad))])]
    assert store.size(Kind.BLOB, _digest(bad)) is None and store.size(Kind.BLOB, _digest(good)) == len(good)
    assert os.listdir(store.quarantine_dir) == [f"sha256-{_digest(bad).encoded}"]
    assert len(good) in scrubbed


def test_another_kind_is_checked_by_its_own_check_in_its_own_table(clock: Reactor, store: Store) -> None:
    # Git responses are named by a hash of their request, not of their bytes.
    kept, broken = _digest(b"request one"), _digest(b"request two")
    store.write_small(Kind.GIT, kept, b"pack...TRAILER")
    store.write_small(Kind.GIT, broken, b"pack, cut")
    store.write_small(Kind.BLOB, _digest(b"not mine"), b"not even its blob")

    def ends_with_trailer(path: str, name: Digest) -> bool:
        with open(path, "rb") as f:
            return f.read().endswith(b"TRAILER")

    scrubber, books, rows, corrupt, scrubbed = _scrubber(clock, store, Kind.GIT, "git_entries", ends_with_trailer)
    scrubber.start()
    for _ in range(4):
        run(clock)
        clock.advance(ROUND_PAUSE)
    scrubber.stop()
    assert corrupt == [broken] and rows.forgotten == [("git_entries", [str(broken)])]
    assert store.size(Kind.GIT, kept) is not None and store.size(Kind.GIT, broken) is None
    assert store.size(Kind.BLOB, _digest(b"not mine")) is not None  # another kind's scrub's business
