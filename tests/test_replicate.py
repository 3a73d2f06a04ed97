"""
Unit tests for L{ocicache._fetch._replicate}: a download's copy into the S3
store, on a fake clock and a fake S3 client (the real radosgw runs in
C{test_integration_s3_store.py}).  Parts go up while the body arrives;
C{CompleteMultipartUpload} only once the digest and length matched; any
failure aborts; part uploads are bounded over all downloads; a follower
keeps no download alive.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from ocicache._fetch._download import Download
from ocicache._fetch._incoming import DownloadError
from ocicache._fetch._replicate import Replicator
from ocicache._spec._reference import Digest
from ocicache._storage._bucket import Bucket
from ocicache._storage._disk import Disk
from ocicache._storage._metadata import Metadata
from ocicache._storage._s3 import S3Client
from ocicache._storage._store import Store
from ocitest.fakes import Reactor, SyncPool, run

PART = 1000


class FakeS3:
    """Records every call; part uploads wait for the test when C{hold} is set."""

    bucket = "b"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.parts: dict[int, bytes] = {}
        self.hold = False
        self.held: list[Deferred[str]] = []

    async def start_upload(self, key: str) -> str:
        self.calls.append(("start", key))
        return f"upload-{len(self.calls)}"

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        self.calls.append(("part", number, len(body)))
        self.parts[number] = body
        if self.hold:
            waiting: Deferred[str] = Deferred()
            self.held.append(waiting)
            return await waiting
        return f"etag-{number}"

    async def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        self.calls.append(("complete", key, tuple(etags)))

    async def abort_upload(self, key: str, upload_id: str) -> None:
        self.calls.append(("abort", key))

    async def put(self, key: str, body: bytes) -> str:
        self.calls.append(("put", key, body))
        return ""

    async def delete(self, key: str) -> None:
        self.calls.append(("delete", key))

    def kinds(self) -> list[str]:
        return [call[0] for call in self.calls]


class FakeMetadata:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int, str]] = []

    def put_blob(self, digest: str, size: int, now: float, table: str = "blobs") -> Deferred[None]:
        self.rows.append((digest, size, table))
        return succeed(None)

    def delete_blobs(self, digests: Iterable[str], table: str = "blobs") -> Deferred[None]:
        gone = set(digests)
        self.rows = [row for row in self.rows if (row[0], row[2]) not in {(digest, table) for digest in gone}]
        return succeed(None)


class World:
    def __init__(self, clock: Reactor, store: Store, max_part_uploads: int = 4) -> None:
        self.clock = clock
        self.s3 = FakeS3()
        self.metadata = FakeMetadata()
        self.disk = Disk(clock, store, cast(Metadata, self.metadata), cast(Any, SyncPool()))
        self.bucket = Bucket(cast(S3Client, self.s3), "p/", self.disk, None)
        self.replicator = Replicator(self.bucket, self.disk, PART, max_part_uploads)

    def download(self, data: bytes, digest: Digest | None = None, size: int | None = -1) -> Download:
        digest = digest or Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
        download = Download(self.disk, digest, len(data) if size == -1 else size)
        download.settled.addErrback(lambda failure: None)  # BlobService logs it
        self.replicator.replicate(download, digest)
        run(self.clock)
        return download


def test_parts_go_up_as_they_arrive_and_the_object_completes_once_verified(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    data = os.urandom(2500)
    download = world.download(data)
    download.write(data[:1000])
    run(clock)
    assert world.s3.kinds() == ["start", "part"]
    download.write(data[1000:])
    run(clock)
    # 2,499 bytes may be read before the digest is checked: part 2 is
    # whole, the last one waits for the final byte.
    assert world.s3.kinds() == ["start", "part", "part"]
    assert world.replicator.live
    download.finish()
    run(clock)
    assert world.s3.kinds() == ["start", "part", "part", "part", "complete"]
    assert world.s3.calls[-1] == ("complete", f"p/blobs/sha256/{download.key.encoded}",
                                  ("etag-1", "etag-2", "etag-3"))
    assert b"".join(world.s3.parts[n] for n in (1, 2, 3)) == data
    assert world.metadata.rows == [(str(download.key), 2500, "bucket_blobs")]
    assert download.key in world.bucket.capacity.policy
    assert not world.replicator.live


def test_a_body_that_does_not_match_is_aborted(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    data = os.urandom(2500)
    download = world.download(data, digest=Digest.parse("sha256:" + "0" * 64))
    download.write(data)
    download.finish()
    run(clock)
    kinds = world.s3.kinds()
    assert kinds[0] == "start" and kinds[-1] == "abort" and "complete" not in kinds
    assert world.metadata.rows == [] and not world.replicator.live


def test_an_upstream_failure_mid_stream_is_aborted(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    data = os.urandom(2500)
    download = world.download(data)
    download.write(data[:1500])
    run(clock)
    download.fail(Failure(DownloadError("upstream went away")))
    run(clock)
    assert world.s3.kinds() == ["start", "part", "abort"]
    assert download.failure is not None


def test_an_empty_blob_is_put(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    download = world.download(b"")
    download.finish()
    run(clock)
    assert world.s3.kinds() == ["start", "abort", "put"]
    assert world.metadata.rows == [(str(download.key), 0, "bucket_blobs")]


def test_part_uploads_are_bounded_over_all_downloads(clock: Reactor, store: Store) -> None:
    world = World(clock, store, max_part_uploads=1)
    world.s3.hold = True
    first, second = os.urandom(3000), os.urandom(3000)
    a, b = world.download(first), world.download(second)
    a.write(first)
    b.write(second)
    run(clock)
    assert world.s3.kinds().count("part") == 1
    world.s3.held.pop(0).callback("e")
    run(clock)
    assert world.s3.kinds().count("part") == 2
    world.s3.hold = False
    while world.s3.held:
        world.s3.held.pop(0).callback("e")
        run(clock)
    a.finish()
    b.finish()
    run(clock)
    assert world.s3.kinds().count("complete") == 2


def test_a_download_every_client_left_is_still_abandoned(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    data = os.urandom(2500)
    download = world.download(data)
    download.write(data[:1000])
    run(clock)
    clock.advance(60)  # nobody reads: the follower does not keep it wanted
    run(clock)
    assert download.failure is not None
    assert world.s3.kinds() == ["start", "part", "abort"]



def test_in_a_fleet_a_completed_object_is_told_to_the_book(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    told: list[tuple[str, int]] = []

    async def added(digest: str, size: int) -> None:
        told.append((digest, size))

    world.bucket.book = cast(Any, SimpleNamespace(added=added))
    data = os.urandom(1500)
    download = world.download(data)
    download.write(data)
    download.finish()
    run(clock)
    assert world.s3.kinds()[-1] == "complete"
    assert told == [(str(download.key), 1500)]
