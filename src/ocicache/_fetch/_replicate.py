"""
A download's copy into the S3 store, made while it arrives.

Each upstream L{Download} is followed (L{Incoming.follow}) by one
L{Replication}: as soon as a part's worth of bytes is in the temp file it
is read back (C{pread} in the disk pool) and sent as an S3 C{UploadPart},
while the clients are still being served.  The final byte of a body is
held back until its SHA-256 and length match, so the last part can only
be sent after the verification, and C{CompleteMultipartUpload} comes after
it: the object appears whole and verified, or not at all.  On any failure
(the upstream, the digest, the disk spilling over to memory, S3 itself)
the upload is aborted; an abort that cannot reach S3 is left to the
bucket janitor (L{ocicache._storage._bucket_janitor}).

Parts are uploaded one at a time per download, and at most
C{max_part_uploads} at once over all downloads, so a part's bytes are the
only ones held in memory: C{upload_part_size} each.
"""

from __future__ import annotations

import os
import time

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.logger import Logger

from .._spec._reference import Digest
from .._storage._bucket import Bucket
from .._storage._disk import Disk
from .._storage._s3 import S3Error, S3Unavailable
from ._download import Download
from ._incoming import State

__all__ = ["Replicator"]

log = Logger()


class _Gone(Exception):
    """The download failed or spilled over: there is nothing to store."""


class Replicator:
    """
    Starts a L{Replication} for each upstream download, and knows the
    uploads in progress (the janitor leaves them alone).
    """

    def __init__(self, bucket: Bucket, disk: Disk, part_size: int, max_part_uploads: int) -> None:
        self._bucket = bucket
        self._disk = disk
        self._part_size = part_size
        self._parts = DeferredSemaphore(max_part_uploads)
        self.live: set[str] = set()
        """Upload ids of replications in progress."""
        self._running: set[Deferred[None]] = set()

    def into(self, bucket: Bucket) -> Replicator:
        """
        A replicator into another area of the store (another kind of
        entry, L{Bucket.sibling}) that shares this one's bound on part
        uploads and its books of uploads in progress.
        """
        other = Replicator(bucket, self._disk, self._part_size, 1)
        other._parts, other.live, other._running = self._parts, self.live, self._running
        return other

    def replicate(self, download: Download, digest: Digest) -> Deferred[None] | None:
        """
        Copy C{download} into the bucket as it arrives, as the object named
        C{digest} (a blob's digest; another kind's key hash); nothing if
        the store is down.  The Deferred fires (never fails) once the upload is
        complete or aborted.
        """
        if not self._bucket.usable:
            return None
        replication = _Replication(self, download, digest)
        done = Deferred.fromCoroutine(replication.run())
        self._running.add(done)
        done.addBoth(lambda result: self._running.discard(done))
        return done

    def settling(self) -> list[Deferred[None]]:
        """The replications still running (the daemon waits for their aborts at stop)."""
        return list(self._running)


class _Replication:
    """One download's multipart upload; a follower of the download."""

    def __init__(self, replicator: Replicator, download: Download, digest: Digest) -> None:
        self._replicator = replicator
        self._bucket = replicator._bucket
        self._download = download
        self._digest = digest
        self._key = self._bucket.key(digest)
        self.position = 0
        """Bytes uploaded (or being uploaded) so far."""
        self._woken: Deferred[None] | None = None

    def data_arrived(self) -> None:
        woken, self._woken = self._woken, None
        if woken is not None:
            woken.callback(None)

    async def run(self) -> None:
        download = self._download
        download.acquire()  # keeps its descriptor open until every part is read
        download.follow(self)
        upload_id: str | None = None
        try:
            upload_id = await self._bucket.guarded(lambda: self._bucket.client.start_upload(self._key))
            self._replicator.live.add(upload_id)
            etags = await self._parts(upload_id)
            await self._complete(upload_id, etags)
            upload_id = None
        except _Gone:
            pass
        except (S3Unavailable, S3Error, OSError) as e:
            log.warn("Could not copy {digest} to the S3 store: {error}", digest=str(self._digest), error=str(e))
        except Exception:
            log.failure("Copying {digest} to the S3 store broke", digest=str(self._digest))
        finally:
            download.unfollow(self)
            download.release()
            if upload_id is not None:
                await self._abort(upload_id)

    async def _parts(self, upload_id: str) -> list[str]:
        """Upload every part, the last only once the body is verified."""
        download = self._download
        part_size = self._replicator._part_size
        etags: list[str] = []
        while True:
            if download.failure is not None or download.passthrough:
                raise _Gone()
            verified = download.state in (State.COMMITTING, State.SETTLED)
            ready = download.available - self.position
            if ready >= part_size or (verified and ready > 0):
                etags.append(await self._part(upload_id, len(etags) + 1, min(ready, part_size)))
            elif verified:
                return etags
            else:
                self._woken = Deferred()
                await self._woken

    async def _part(self, upload_id: str, number: int, length: int) -> str:
        span = self._download.file_span(self.position)
        if span is None:
            raise _Gone()
        offset, self.position = self.position, self.position + length
        await self._replicator._parts.acquire()
        try:
            data = await self._replicator._disk.run(_read_exactly, span[0], length, offset)
            etag = await self._bucket.guarded(
                lambda: self._bucket.client.upload_part(self._key, upload_id, number, data))
        finally:
            self._replicator._parts.release()
        self._bucket.on_bytes("uploaded", length)
        return etag

    async def _complete(self, upload_id: str, etags: list[str]) -> None:
        digest, size = self._digest, self.position
        capacity = self._bucket.capacity
        # max_size holds for the bucket: room is made (evicting objects)
        # before the object appears, as for a commit to disk.
        if not await capacity.make_room(size):
            raise _Gone()
        try:
            if etags:
                await self._bucket.guarded(lambda: self._bucket.client.complete_upload(self._key, upload_id, etags))
            else:
                # S3 refuses a multipart upload of no parts: an empty blob is a PUT.
                await self._bucket.guarded(lambda: self._bucket.client.abort_upload(self._key, upload_id))
                await self._bucket.guarded(lambda: self._bucket.client.put(self._key, b""))
        except BaseException:
            capacity.release(size)
            raise
        self._replicator.live.discard(upload_id)
        self._bucket.on_upload("completed")
        capacity.committed(digest, size)
        await self._replicator._disk.metadata.put_blob(str(digest), size, time.time(), table=capacity.table)
        if self._bucket.book is not None:
            # In a fleet, the others' indexes count it too (their next janitor pass).
            await self._bucket.book.added(str(digest), size)

    async def _abort(self, upload_id: str) -> None:
        try:
            await self._bucket.guarded(lambda: self._bucket.client.abort_upload(self._key, upload_id))
        except (S3Unavailable, S3Error) as e:
            log.info("Could not abort the upload of {key} ({error}); the janitor will", key=self._key, error=str(e))
        self._replicator.live.discard(upload_id)
        self._bucket.on_upload("aborted")


def _read_exactly(fd: int, length: int, offset: int) -> bytes:
    """A part read back from the temp file (blocking: the disk pool)."""
    chunks = []
    while length:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise OSError(f"the temp file ended {length} bytes short")
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)
