"""
Unit tests of the S3 store for a kind of entry that is not a blob (as git
responses are), on a fake clock and fake S3: the bucket tier streams an
object through the key's own verifier, keeps it in the kind's local
directory and deletes an object its verifier refuses, by the name it is
stored under; a replicator into another area of the bucket puts objects
under that area's keys and index, and shares the part-upload bound.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from twisted.internet.defer import Deferred

from ocicache._fetch._bucket_tier import BucketEntries
from ocicache._fetch._download import Download
from ocicache._fetch._fills import Fills
from ocicache._fetch._replicate import Replicator
from ocicache._fetch._result import CacheResult
from ocicache._fetch._sink import DiskSink
from ocicache._fetch._walk import Found, Want
from ocicache._spec._reference import Digest
from ocicache._storage._bucket import Bucket
from ocicache._storage._disk import Disk
from ocicache._storage._health import DiskHealth
from ocicache._storage._metadata import Metadata
from ocicache._storage._s3 import S3Client
from ocicache._storage._store import Kind, Store
from ocitest.fakes import Reactor, SyncPool, disk_of, run
from test_bucket_tier import FakeBucket, _now
from test_fetch_core import TRAILER, Books, Named
from test_replicate import PART, FakeMetadata, FakeS3


def _key(request: str) -> Named:
    """A key named by a hash of a request, stored as C{sha256/<hex>}."""
    return Named("sha256", hashlib.sha256(request.encode()).hexdigest())


def _stored_as(key: Named) -> Digest:
    return Digest("sha256", key.encoded)


def _tier(clock: Reactor, store: Store) -> tuple[BucketEntries[Named], FakeBucket, Books, list[Named]]:
    bucket = FakeBucket()
    fills: Fills[Named] = Fills()
    books = Books()
    corrupt: list[Named] = []
    sink = DiskSink(disk_of(clock, SyncPool(), store), fills, books, DiskHealth(), Kind.GIT)
    tier = BucketEntries(cast(Bucket, bucket), fills, sink, clock, _stored_as, corrupt.append)
    return tier, bucket, books, corrupt


def test_an_entry_is_read_back_through_its_own_verifier(clock: Reactor, store: Store) -> None:
    tier, bucket, books, corrupt = _tier(clock, store)
    key = _key("clone app")
    data = b"pack" * 100 + TRAILER
    bucket.objects[_stored_as(key)] = data
    found = _now(tier.find(key))
    assert found == Found(len(data))
    hit = _now(tier.open(key, Want(), found))
    assert hit.result is CacheResult.HIT
    hit.accessed()
    assert bucket.capacity.accessed_digests == [_stored_as(key)]
    bucket.opened[0].send()
    run(clock)
    assert hit.source.committed and books.stored == [(key, len(data))]
    assert store.size(Kind.GIT, key) == len(data) and store.size(Kind.BLOB, key) is None
    hit.source.release()


def test_an_object_its_verifier_refuses_is_cut_and_deleted(clock: Reactor, store: Store) -> None:
    tier, bucket, books, corrupt = _tier(clock, store)
    key = _key("clone app")
    data = b"pack" * 100 + b"--BAD--"
    bucket.objects[_stored_as(key)] = data
    hit = _now(tier.open(key, Want(), Found(len(data))))
    bucket.opened[0].send()
    run(clock)
    source = hit.source
    assert source.failure is not None and not source.committed
    assert source.available < len(data)  # the last byte was never released
    assert corrupt == [key] and bucket.capacity.deleted == [_stored_as(key)]
    assert store.size(Kind.GIT, key) is None and books.stored == []
    source.release()


class Area:
    """The blobs' bucket and replicator, and a git area beside them."""

    def __init__(self, clock: Reactor, store: Store, max_part_uploads: int, max_size: int | None = None) -> None:
        self.clock = clock
        self.s3 = FakeS3()
        self.metadata = FakeMetadata()
        self.disk = Disk(clock, store, cast(Metadata, self.metadata), cast(Any, SyncPool()))
        self.blobs = Bucket(cast(S3Client, self.s3), "p/", self.disk, max_size)
        self.blob_replicator = Replicator(self.blobs, self.disk, PART, max_part_uploads)
        self.git = self.blobs.sibling("git", "bucket_git_entries")
        self.replicator = self.blob_replicator.into(self.git)

    def download(self, key: Named, size: int) -> Download:
        download = Download(self.disk, key, size, kind=Kind.GIT)
        download.settled.addErrback(lambda failure: None)
        self.replicator.replicate(download, _stored_as(key))
        run(self.clock)
        return download


def test_an_entry_goes_up_under_its_area_and_index(clock: Reactor, store: Store) -> None:
    area = Area(clock, store, 4)
    key = _key("clone app")
    data = b"p" * 1500 + TRAILER
    download = area.download(key, len(data))
    download.write(data)
    download.finish()
    run(clock)
    assert area.s3.kinds() == ["start", "part", "part", "complete"]
    assert area.s3.calls[-1][1] == f"p/git/sha256/{key.encoded}"
    assert area.metadata.rows == [(str(_stored_as(key)), len(data), "bucket_git_entries")]
    assert _stored_as(key) in area.git.capacity.policy and _stored_as(key) not in area.blobs.capacity.policy
    assert area.git.digest_of(f"p/git/sha256/{key.encoded}") == _stored_as(key)
    assert area.blobs.digest_of(f"p/git/sha256/{key.encoded}") is None
    assert area.git.health is area.blobs.health
    assert not area.blob_replicator.live


def test_a_body_its_verifier_refuses_is_aborted(clock: Reactor, store: Store) -> None:
    area = Area(clock, store, 4)
    key = _key("clone app")
    data = b"p" * 1500 + b"--BAD--"
    download = area.download(key, len(data))
    download.write(data)
    download.finish()
    run(clock)
    assert area.s3.kinds()[-1] == "abort" and "complete" not in area.s3.kinds()
    assert area.metadata.rows == [] and len(area.git.capacity.policy) == 0


def test_the_areas_share_the_part_upload_bound(clock: Reactor, store: Store) -> None:
    area = Area(clock, store, 1)
    area.s3.hold = True
    blob = Download(area.disk, Digest("sha256", hashlib.sha256(b"b" * PART).hexdigest()), PART * 2)
    blob.settled.addErrback(lambda failure: None)
    area.blob_replicator.replicate(blob, cast(Digest, blob.key))
    entry = area.download(_key("clone app"), PART * 2)
    blob.write(b"b" * PART)
    entry.write(b"e" * PART)
    run(clock)
    assert area.s3.kinds().count("part") == 1  # one part at a time over both areas
    assert len(area.blob_replicator.live) == 2
    held: Deferred[str] = area.s3.held.pop()
    held.callback("etag-1")
    run(clock)
    assert area.s3.kinds().count("part") == 2


def test_the_areas_share_the_buckets_budget(clock: Reactor, store: Store) -> None:
    """
    [cache] max_size bounds the bucket as a whole: a git response that
    needs room evicts the oldest blob object, and the two areas' bytes
    are counted in one budget.
    """
    area = Area(clock, store, 4, max_size=2000)
    assert area.git.capacity.budget is area.blobs.capacity.budget
    blob = Digest("sha256", "b" * 64)
    area.blobs.capacity.load([(blob, 1000, False)])
    key = _key("clone app")
    data = b"p" * 1500 + TRAILER
    download = area.download(key, len(data))
    download.write(data)
    download.finish()
    run(clock)
    assert ("delete", f"p/blobs/sha256/{'b' * 64}") in area.s3.calls
    assert area.s3.kinds()[-1] == "complete"
    assert blob not in area.blobs.capacity.policy and _stored_as(key) in area.git.capacity.policy
    assert area.blobs.capacity.budget.size == area.git.capacity.size == len(data)
