"""
The S3 store's janitor (L{ocicache._storage._bucket_janitor}) with and
without a fleet's book (L{ocicache._storage._bucket.BucketBook}), on a
fake S3 client and a fake book, over a real metadata database: an object
another node reads is not expired, one node at a time expires and evicts,
evictions (the janitor's, and those making room for a new object) go by
the fleet's recency and leave what any node protects, objects another node removed leave the index, and
without the book (Redis down) a pass is a single node's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.python.threadpool import ThreadPool

from ocicache._spec._reference import Digest
from ocicache._storage._bucket import Bucket, SharedPass
from ocicache._storage._bucket_janitor import BucketJanitor
from ocicache._storage._disk import Disk
from ocicache._storage._metadata import Metadata, MetadataUnavailable
from ocicache._storage._s3 import ObjectInfo, S3Client, Upload
from ocicache._storage._store import Store

TTL = 3600.0
PREFIX = "p/"


def _digest(n: int) -> Digest:
    return Digest.parse("sha256:" + f"{n:02x}" * 32)


A, B, C = _digest(1), _digest(2), _digest(3)


class FakeS3:
    bucket = "b"

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.deleted: list[str] = []

    async def objects(self, prefix: str) -> list[ObjectInfo]:
        return [ObjectInfo(key, size, "e") for key, size in self.sizes.items() if key.startswith(prefix)]

    async def uploads(self, prefix: str) -> list[Upload]:
        return []

    async def delete(self, key: str) -> None:
        self.sizes.pop(key, None)
        self.deleted.append(key)


class FakePass:
    def __init__(self, book: FakeBook) -> None:
        self._book = book
        self.evictor = book.evictor
        self.gone: Sequence[str] = book.gone
        self.added: Mapping[str, int] = book.others_added
        self.ended = False

    async def last_access(self, digests: Sequence[str]) -> Mapping[str, float] | None:
        return await self._book.last_access(digests)

    async def holds(self) -> bool:
        return self.evictor and self._book.holds

    async def end(self) -> None:
        self.ended = True


class FakeBook:
    """What Redis would answer: the fleet's reads, whose turn it is, what others removed."""

    def __init__(self, evictor: bool = True, fleet: dict[str, float] | None = None, gone: Sequence[str] = (),
                 down: bool = False, added: Mapping[str, int] | None = None,
                 kept: set[str] | None = None) -> None:
        self.evictor = evictor
        self.kept = kept or set()
        """What the other nodes protect."""
        self.mine: list[set[str]] = []
        self.others_added = added or {}
        self.additions: list[tuple[str, int]] = []
        self.fleet = fleet or {}
        self.gone = gone
        self.down = down
        self.holds = True
        self.pushed: list[dict[str, float]] = []
        self.removals: list[str] = []
        self.passes: list[FakePass] = []

    async def begin(self, accesses: Mapping[str, float], protected: Collection[str] = ()) -> SharedPass | None:
        if self.down:
            return None
        self.pushed.append(dict(accesses))
        self.mine.append(set(protected))
        shared = FakePass(self)
        self.passes.append(shared)
        return shared

    async def removed(self, digests: Sequence[str]) -> None:
        self.removals += digests

    async def added(self, digest: str, size: int) -> None:
        self.additions.append((digest, size))

    async def protected(self) -> set[str] | None:
        return None if self.down else self.kept | (self.mine[-1] if self.mine else set())

    async def last_access(self, digests: Sequence[str]) -> Mapping[str, float] | None:
        return None if self.down else {digest: self.fleet[digest] for digest in digests if digest in self.fleet}


class World:
    def __init__(self, tmp_path: Path, pool: ThreadPool, metadata: Metadata, book: FakeBook | None,
                 max_size: int | None = None, blob_ttl: float | None = TTL, pinned: Iterable[Digest] = ()) -> None:
        store = Store(str(tmp_path / "cache"))
        store.prepare()
        self.s3 = FakeS3()
        self.metadata = metadata
        disk = Disk(reactor, store, metadata, pool)
        pins = set(pinned)

        async def protected() -> set[Digest]:
            return pins

        self.bucket = Bucket(cast(S3Client, self.s3), PREFIX, disk, max_size, book=book, protected=protected)
        self.janitor = BucketJanitor(self.bucket, metadata, blob_ttl, abandon_uploads_after=86400)

    async def put(self, digest: Digest, size: int, last_read_ago: float) -> None:
        """An object in the bucket, that this node last read so long ago."""
        self.s3.sizes[self.bucket.key(digest)] = size
        await self.metadata.put_blob(str(digest), size, time.time(), table="bucket_blobs")
        # put_blob sets last_access to now, and touch_blobs only moves it on: set it back by hand.
        await self.metadata._execute("UPDATE bucket_blobs SET last_access=? WHERE digest=?",
                                     time.time() - last_read_ago, str(digest))

    def stored(self) -> set[Digest]:
        return {digest for key in self.s3.sizes if (digest := self.bucket.digest_of(key)) is not None}


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[ThreadPool, Metadata]]:
    pool = ThreadPool(minthreads=0, maxthreads=2, name="test-disk")
    pool.start()
    os.makedirs(tmp_path / "db")
    metadata = Metadata(str(tmp_path / "db" / "metadata.sqlite"), IReactorThreads(reactor))
    pytest_twisted.blockon(metadata.open())
    yield pool, metadata
    pytest_twisted.blockon(metadata.close())
    pool.stop()


def _now(ago: float = 0.0) -> float:
    return time.time() - ago


@pytest_twisted.ensureDeferred
async def test_an_object_another_node_reads_is_not_expired(
        tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    # A and B unread here for two TTLs; another node read A a minute ago.
    book = FakeBook(fleet={str(A): _now(60)})
    world = World(tmp_path, *parts, book=book)
    await world.put(A, 100, 2 * TTL)
    await world.put(B, 100, 2 * TTL)
    await world.janitor.recover()
    world.bucket.capacity.accessed(C)  # not indexed: only pushed
    report = await world.janitor.run()
    assert report.expired == 1
    assert world.stored() == {A}
    assert world.s3.deleted == [world.bucket.key(B)]
    # The removal is told to the fleet, this node's reads too, and the turn given back.
    assert book.removals == [str(B)]
    assert list(book.pushed[0]) == [str(C)]
    assert book.passes[0].ended
    assert [row.digest for row in await world.metadata.blobs("bucket_blobs")] == [str(A)]


@pytest_twisted.ensureDeferred
async def test_a_node_without_the_evictors_turn_neither_expires_nor_evicts(
        tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    book = FakeBook(evictor=False)
    world = World(tmp_path, *parts, book=book, max_size=150)
    await world.put(A, 100, 2 * TTL)
    await world.put(B, 100, 2 * TTL)
    await world.janitor.recover()
    world.bucket.capacity.accessed(A)
    report = await world.janitor.run()
    assert report.skipped and (report.expired, report.evicted) == (0, 0)
    assert world.stored() == {A, B} and world.s3.deleted == []
    assert list(book.pushed[0]) == [str(A)]  # its reads still count for the fleet


@pytest_twisted.ensureDeferred
async def test_a_turn_lost_mid_pass_deletes_nothing(tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    book = FakeBook()
    book.holds = False  # it expired in a stall; another node holds it now
    world = World(tmp_path, *parts, book=book, max_size=150)
    await world.put(A, 100, 2 * TTL)
    await world.put(B, 100, 10)
    await world.janitor.recover()
    report = await world.janitor.run()
    assert (report.expired, report.evicted) == (0, 0)
    assert world.stored() == {A, B}


@pytest_twisted.ensureDeferred
async def test_evictions_go_by_the_fleets_recency(tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    # Here, A was read longest ago, then C, then B; another node read A
    # just now.  Alone, this node would evict A first; the fleet evicts C.
    book = FakeBook(fleet={str(A): _now(1)})
    world = World(tmp_path, *parts, book=book, max_size=250, blob_ttl=None)
    await world.put(A, 100, 300)
    await world.put(C, 100, 200)
    await world.put(B, 100, 100)
    await world.janitor.recover()
    report = await world.janitor.run()
    assert report.evicted == 1
    assert world.stored() == {A, B}
    assert book.removals == [str(C)]
    assert world.bucket.capacity.size == 200


@pytest_twisted.ensureDeferred
async def test_what_another_node_removed_leaves_the_index_and_is_not_evicted_for(
        tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    # Three objects over a 250-byte budget, but another node removed C:
    # the two left fit, so nothing more is evicted.
    book = FakeBook(gone=[str(C), "not-a-digest"])
    world = World(tmp_path, *parts, book=book, max_size=250, blob_ttl=None)
    for n, digest in enumerate((A, B, C)):
        await world.put(digest, 100, 100 - n)
    await world.janitor.recover()
    del world.s3.sizes[world.bucket.key(C)]  # removed by the other node after this one listed
    report = await world.janitor.run()
    assert (report.forgotten, report.evicted) == (1, 0)
    assert world.stored() == {A, B}
    assert C not in world.bucket.capacity.policy and world.bucket.capacity.size == 200
    assert {row.digest for row in await world.metadata.blobs("bucket_blobs")} == {str(A), str(B)}


@pytest_twisted.ensureDeferred
async def test_without_the_book_a_pass_is_a_single_nodes(tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    # Redis down: the book answers nothing, and this node judges on its own reads.
    book = FakeBook(down=True, fleet={str(A): _now(60)})
    world = World(tmp_path, *parts, book=book)
    await world.put(A, 100, 2 * TTL)
    await world.put(B, 100, 10)
    await world.janitor.recover()
    report = await world.janitor.run()
    assert report.expired == 1 and not report.skipped
    assert world.stored() == {B}


@pytest_twisted.ensureDeferred
async def test_a_single_node_expires_and_evicts_as_before(tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    world = World(tmp_path, *parts, book=None, max_size=150)
    await world.put(A, 100, 2 * TTL)
    await world.put(B, 100, 20)
    await world.put(C, 100, 10)
    await world.janitor.recover()
    report = await world.janitor.run()
    assert (report.expired, report.evicted) == (1, 1)
    assert world.stored() == {C}


@pytest.mark.parametrize("down", [False, True])
@pytest_twisted.ensureDeferred
async def test_room_for_a_new_object_is_made_by_the_fleets_recency(
        tmp_path: Path, parts: tuple[ThreadPool, Metadata], down: bool) -> None:
    # A full bucket, A read longest ago here but just now by another node:
    # a new object's room evicts C and B, not A (Redis down: this node's
    # own order, A first).
    book = FakeBook(fleet={str(A): _now(1)}, down=down)
    world = World(tmp_path, *parts, book=book, max_size=300, blob_ttl=None)
    await world.put(A, 100, 300)
    await world.put(C, 100, 200)
    await world.put(B, 100, 100)
    await world.janitor.recover()
    assert await world.bucket.capacity.make_room(100)
    assert world.stored() == ({B} if down else {A})


@pytest_twisted.ensureDeferred
async def test_what_another_node_stored_is_indexed_and_counted(
        tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    # B and C completed by other nodes since this one listed the bucket:
    # its index counts them, so the pass evicts down to max_size: A, the
    # one read longest ago (B and C count as read when they were stored).
    book = FakeBook(added={str(B): 100, str(C): 100, "not-a-digest": 5})
    world = World(tmp_path, *parts, book=book, max_size=250, blob_ttl=None)
    await world.put(A, 100, 300)
    await world.janitor.recover()
    world.s3.sizes.update({world.bucket.key(B): 100, world.bucket.key(C): 100})
    report = await world.janitor.run()
    assert (report.adopted, report.evicted) == (2, 1)
    assert world.stored() == {B, C}
    assert world.bucket.capacity.size == 200
    assert len(await world.metadata.blobs("bucket_blobs")) == 2


@pytest_twisted.ensureDeferred
async def test_what_another_node_protects_is_neither_expired_nor_evicted(
        tmp_path: Path, parts: tuple[ThreadPool, Metadata]) -> None:
    # A is pinned on another node, C on this one; both unread for two TTLs.
    book = FakeBook(kept={str(A)})
    world = World(tmp_path, *parts, book=book, max_size=150, pinned=[C])
    await world.put(A, 100, 2 * TTL)
    await world.put(B, 100, 2 * TTL)
    await world.put(C, 100, 2 * TTL)
    await world.janitor.recover()
    report = await world.janitor.run()
    assert (report.expired, report.evicted) == (1, 0)
    assert world.stored() == {A, C}
    assert book.mine == [{str(C)}]  # this node's pins, for the others
    # Room for a new object evicts neither either: it is not kept.
    assert not await world.bucket.capacity.make_room(100)
    assert world.stored() == {A, C}


@pytest_twisted.ensureDeferred
async def test_a_pass_that_fails_gives_the_evictors_turn_back(
        tmp_path: Path, parts: tuple[ThreadPool, Metadata], monkeypatch: pytest.MonkeyPatch) -> None:
    book = FakeBook(gone=[str(A)])
    world = World(tmp_path, *parts, book=book)
    await world.put(A, 100, 10)
    await world.janitor.recover()

    def broken(digests: object, table: str = "blobs") -> object:
        raise MetadataUnavailable("metadata.sqlite", "disk I/O error")

    monkeypatch.setattr(world.metadata, "delete_blobs", broken)
    with pytest.raises(MetadataUnavailable):
        await world.janitor.run()
    assert book.passes[0].ended
