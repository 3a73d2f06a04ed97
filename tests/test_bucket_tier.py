"""
Unit tests of the S3 store as a tier of the fetch core
(L{ocicache._fetch._bucket_tier}), on a fake clock and a fake bucket: a
blob there is streamed through a download (verified again, joinable,
filling the local tier), a C{Range} straight from the client's offset, a
store that is down or loses the object holds nothing, and an object that
is not its blob is deleted.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse

from ocicache._fetch._bucket_tier import BucketTier, NotInBucket
from ocicache._fetch._fills import Fills
from ocicache._fetch._ranged import BucketRange
from ocicache._fetch._result import CacheResult
from ocicache._fetch._sink import DiskSink
from ocicache._fetch._walk import Found, Want
from ocicache._spec._reference import Digest
from ocicache._storage._bucket import Bucket
from ocicache._storage._health import DiskHealth
from ocicache._storage._s3 import S3Unavailable
from ocicache._storage._store import Kind, Store
from ocitest.fakes import Reactor, SyncPool, disk_of, run


class Body:
    """An S3 response whose body the test delivers."""

    code = 200

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.protocol: Protocol | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(cast(Any, None))

    def send(self, cut: bool = False) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(self.data)
        self.protocol.connectionLost(Failure(ConnectionError("reset") if cut else ResponseDone()))


class Capacity:
    def __init__(self) -> None:
        self.accessed_digests: list[Digest] = []
        self.deleted: list[Digest] = []

    def accessed(self, digest: Digest) -> None:
        self.accessed_digests.append(digest)

    async def delete(self, digests: list[Digest]) -> None:
        self.deleted.extend(digests)


class FakeBucket:
    name = "b"

    def __init__(self) -> None:
        self.usable = True
        self.objects: dict[Digest, bytes] = {}
        self.capacity = Capacity()
        self.opened: list[Body] = []
        self.gone_on_open = False
        self.down_on_open = False
        self.counted: list[tuple[str, int]] = []

    async def size(self, digest: Digest) -> int | None:
        if not self.usable:
            raise S3Unavailable("down")
        data = self.objects.get(digest)
        return len(data) if data is not None else None

    async def open(self, digest: Digest) -> IResponse | None:
        if self.down_on_open:
            raise S3Unavailable("went down")
        if self.gone_on_open:
            return None
        body = Body(self.objects[digest])
        self.opened.append(body)
        return cast(IResponse, body)

    def on_bytes(self, direction: str, count: int) -> None:
        self.counted.append((direction, count))


class Books:
    def __init__(self) -> None:
        self.stored: list[tuple[Digest, int]] = []

    async def make_room(self, key: Digest, size: int) -> bool:
        return True

    def kept(self, key: Digest, size: int) -> None:
        self.stored.append((key, size))

    def not_kept(self, key: Digest, size: int) -> None:
        pass


def _tier(clock: Reactor, store: Store) -> tuple[BucketTier, FakeBucket, Fills[Digest], Books, list[Digest]]:
    bucket = FakeBucket()
    fills: Fills[Digest] = Fills()
    books = Books()
    corrupt: list[Digest] = []
    sink = DiskSink(disk_of(clock, SyncPool(), store), fills, books, DiskHealth(), Kind.BLOB)
    return BucketTier(cast(Bucket, bucket), fills, sink, clock, corrupt.append), bucket, fills, books, corrupt


def _blob(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def _now(d: Any) -> Any:
    seen: list[Any] = []
    ensureDeferred(d).addBoth(seen.append)
    assert seen
    if isinstance(seen[0], Failure):
        seen[0].raiseException()
    return seen[0]


def test_a_blob_in_the_bucket_is_streamed_verified_and_kept_locally(clock: Reactor, store: Store) -> None:
    tier, bucket, fills, books, corrupt = _tier(clock, store)
    data = b"layer" * 1000
    digest = _blob(data)
    bucket.objects[digest] = data
    found = _now(tier.find(digest))
    assert found == Found(len(data))
    hit = _now(tier.open(digest, Want(), found))
    assert hit.result is CacheResult.HIT and fills.inflight[digest] is hit.source
    other = _now(tier.open(digest, Want(), found))  # a second client joins it
    assert other.result is CacheResult.COALESCED and len(bucket.opened) == 1
    hit.accessed()
    assert bucket.capacity.accessed_digests == [digest]
    bucket.opened[0].send()
    run(clock)
    assert hit.source.committed and books.stored == [(digest, len(data))]
    assert store.size(Kind.BLOB, digest) == len(data)
    assert bucket.counted == [("downloaded", len(data))] and corrupt == []
    hit.source.release()
    other.source.release()


def test_an_object_that_is_not_its_blob_is_cut_and_deleted(clock: Reactor, store: Store) -> None:
    tier, bucket, fills, books, corrupt = _tier(clock, store)
    digest = _blob(b"the real layer")
    bucket.objects[digest] = b"something else"
    hit = _now(tier.open(digest, Want(), Found(len(b"something else"))))
    bucket.opened[0].send()
    run(clock)
    source = hit.source
    assert source.failure is not None and not source.committed
    assert source.available < len(b"something else")  # the last byte was never released
    assert corrupt == [digest] and bucket.capacity.deleted == [digest]
    assert store.size(Kind.BLOB, digest) is None and books.stored == []
    source.release()


def test_a_range_is_streamed_from_the_clients_offset(clock: Reactor, store: Store) -> None:
    tier, bucket, fills, books, corrupt = _tier(clock, store)
    data = b"x" * 100
    digest = _blob(data)
    bucket.objects[digest] = data
    hit = _now(tier.open(digest, Want(ranged=True), Found(len(data))))
    assert isinstance(hit.source, BucketRange) and hit.result is CacheResult.HIT
    assert fills.inflight == {} and bucket.opened == []  # nothing fetched until a client reads


def test_a_store_that_is_down_or_lost_the_object_holds_nothing(clock: Reactor, store: Store) -> None:
    tier, bucket, fills, books, corrupt = _tier(clock, store)
    data = b"y" * 10
    digest = _blob(data)
    bucket.objects[digest] = data
    bucket.usable = False
    assert _now(tier.find(digest)) is None
    bucket.usable = True
    assert _now(tier.find(_blob(b"absent"))) is None
    assert _now(tier.open(digest, Want(), Found(None))) is None
    bucket.gone_on_open = True
    assert _now(tier.open(digest, Want(), Found(len(data)))) is None
    bucket.gone_on_open, bucket.down_on_open = False, True
    assert _now(tier.open(digest, Want(), Found(len(data)))) is None
    with pytest.raises(NotInBucket):
        _now(tier.stream(digest, len(data)))
    assert fills.inflight == {}


def test_a_disk_that_refuses_leaves_the_object_unread(clock: Reactor, store: Store) -> None:
    import os

    tier, bucket, fills, books, corrupt = _tier(clock, store)
    data = b"z" * 10
    digest = _blob(data)
    bucket.objects[digest] = data
    os.rmdir(store.tmp_dir)
    assert _now(tier.open(digest, Want(), Found(len(data)))) is None
    assert fills.inflight == {}
