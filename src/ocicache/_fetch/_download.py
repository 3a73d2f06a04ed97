"""
The download: one upstream body, hashed and written to a temp file by the
disk thread, and read meanwhile by any number of clients.

Clients never read from the upstream connection: each reads the temp file
at the pace its own connection drains.  The upstream is paused only when
the disk thread falls behind, so memory stays bounded by L{HIGH_WATER} per
download, whatever the blob size or the number of clients.

When the upstream fails, or the finished body does not match its digest or
length, every client that has not received all its bytes is cut short of
its C{Content-Length}, never sent a complete-looking bad blob, and nothing
is committed.  When the disk fails (ENOSPC, EIO), the rest of the body
passes through memory (L{PassThrough}) to the clients already reading it,
and nothing is committed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._storage._disk import Disk
from .._storage._reading import read_elsewhere
from .._storage._store import Kind, TempFile
from ._incoming import DownloadError, Incoming, State
from ._key import Key, Verifier
from ._passthrough import HIGH_WATER, LOW_WATER, PassThrough
from ._source import Reader

__all__ = ["ABANDON_AFTER", "BATCH", "KEEP_FRACTION", "Download"]

log = Logger()

BATCH = 2 << 20
"""Bytes handed to the disk thread at once; clients see progress per batch."""

ABANDON_AFTER = 10.0
"""
Seconds a download may go without a reader before it is abandoned: long
enough for containerd to come back with C{Range: bytes=N-}.
"""

KEEP_FRACTION = 0.5
"""A download that has this much of its body is finished for the cache even unread."""


class Download(Incoming):
    """
    One upstream body on its way into the store.

    Feed it with L{write}, then L{finish} or L{fail}.  Streamers
    L{acquire} it and read what has arrived meanwhile; the last to
    L{release} it, once it has ended, closes its descriptor.
    """

    def __init__(
        self,
        disk: Disk,
        key: Key,
        size: int | None,
        before_commit: Callable[[int], Awaitable[bool]] | None = None,
        on_disk_error: Callable[[OSError], None] = lambda error: None,
        abandon_after: float = ABANDON_AFTER,
        keep_fraction: float = KEEP_FRACTION,
        kind: Kind = Kind.BLOB,
    ) -> None:
        super().__init__(key, size)
        self.path: str | None = None
        """Where the blob was committed, once it was."""
        self._disk = disk
        self._before_commit = before_commit
        self._kind = kind
        self._on_disk_error = on_disk_error
        self._temp: TempFile | None = disk.store.new_temp(key.encoded[:16])
        self.temp_path = self._temp.path
        try:
            self._read_fd = os.open(self._temp.path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self._discard()  # not even a reader: the temp file goes with it
            raise
        self._users = 0
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._in_disk_thread = 0
        """Bytes of the batch the disk thread is writing now (0: none)."""
        self._writing = False
        self._spill: PassThrough | None = None
        self._abandon_after = abandon_after
        self._keep_fraction = keep_fraction
        self._abandon: IDelayedCall | None = None
        self._arm_abandon()  # the first reader subscribes at once

    @property
    def committed(self) -> bool:
        return self.path is not None

    @property
    def passthrough(self) -> bool:
        """Whether the disk failed and the rest passes through memory."""
        return self._spill is not None

    # -- the upstream side

    def write(self, data: bytes) -> None:
        if self._spill is not None:
            self._spill.write(data)
            return
        if self.ended:
            return
        if self._too_long(self._received + self._in_disk_thread + self._queued + len(data)):
            self.fail(Failure(DownloadError(f"upstream sent more than {self.size} bytes")))
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued >= HIGH_WATER:
            self._pause_upstream()
        self._kick()

    def finish(self) -> None:
        """
        The upstream body ended cleanly: verify and commit once the disk
        thread has caught up.
        """
        if self._spill is not None:
            self._spill.finish()
        elif self.state is State.RECEIVING:
            self.state = State.DRAINING
            self._kick()

    def fail(self, reason: Failure) -> None:
        # Once verified the bytes are good: a late failure (the upstream
        # connection closing) must not unsettle a commit.
        if self.ended or self.state is State.COMMITTING:
            return
        if self._spill is not None:
            self._spill.fail(reason)
            return
        if self.state is State.RECEIVING:
            self._stop_upstream()
        self._disarm_abandon()
        self.state = State.FAILED
        self.failure = reason
        self._queue.clear()
        self._queued = 0
        if not self._writing:
            self._discard()
        self._notify()
        self.settled.errback(reason)
        self._maybe_close()

    # -- the disk side

    def _kick(self) -> None:
        if self._writing or self.state not in (State.RECEIVING, State.DRAINING):
            return
        if self._queue:
            batch: list[bytes] = []
            size = 0
            while self._queue and size < BATCH:
                chunk = self._queue.popleft()
                batch.append(chunk)
                size += len(chunk)
            self._queued -= size
            self._in_disk_thread = size
            self._writing = True
            temp = self._temp
            if temp is None:
                raise RuntimeError("a download is writing without a temp file")
            written = self._disk.run(_write_batch, temp.fd, self._verifier, batch)
            written.addCallback(self._written, batch)
            written.addErrback(self._broken)
        elif self.state is State.DRAINING:
            Deferred.fromCoroutine(self._verify()).addErrback(self._broken)

    def _written(self, outcome: tuple[int, OSError | None], batch: list[bytes]) -> None:
        self._writing = False
        self._in_disk_thread = 0
        done, error = outcome
        if self.ended:
            self._discard()
            return
        self._received += sum(len(chunk) for chunk in batch[:done])
        if error is not None:
            self._spill_over(error, batch[done:])
            return
        if self._queued < LOW_WATER:
            self._resume_upstream()
        self._notify()
        self._kick()

    def _spill_over(self, error: OSError, unwritten: list[bytes]) -> None:
        """
        The disk failed: the rest goes through memory to the readers
        already here, and nothing is kept.
        """
        self._on_disk_error(error)
        self._disarm_abandon()  # the pass-through ends when its readers leave
        body_ended = self.state is State.DRAINING
        spill = PassThrough(self.key, self.size, self._received, self._verifier, self._readers)
        self._hand_upstream_to(spill)
        self._spill = spill
        self.state = State.SPILLED
        queued = [*unwritten, *self._queue]
        self._queue.clear()
        self._queued = 0
        spill.settled.addBoth(self._spill_settled)
        spill.take_over(queued, body_ended)
        self._notify()

    def _spill_settled(self, result: str | None | Failure) -> None:
        spill = self._spill
        if spill is None:
            return
        self.size = spill.size
        self._discard()
        if isinstance(result, Failure):
            self.state = State.FAILED
            self.failure = result
            self.settled.errback(result)
        else:
            self.state = State.SETTLED
            self.settled.callback(None)
        self._notify()
        self._maybe_close()

    async def _verify(self) -> None:
        error = self._check()
        if error is not None:
            self.fail(Failure(error))
            return
        # The length is now known even when the upstream did not say.
        self.size = self._received
        self._disarm_abandon()
        self.state = State.COMMITTING
        self._producer = None
        self._notify()
        temp, self._temp = self._temp, None
        if temp is None:
            raise RuntimeError("a download verified without a temp file")
        keep = True
        if self._before_commit is not None:
            try:
                keep = await self._before_commit(self.size)
            except Exception:
                log.failure("Could not make room for {key}", key=str(self.key))
                keep = False
        if keep:
            try:
                self.path = await self._disk.run(self._disk.store.commit, temp, self._kind, self.key)
            except OSError as e:
                # Every reader can still finish from the open descriptor:
                # the bytes are verified, just not kept.
                self._on_disk_error(e)
        if self.path is None:
            temp.discard()
        self.state = State.SETTLED
        self._notify()
        self.settled.callback(self.path)
        self._maybe_close()

    def _broken(self, reason: Failure) -> None:
        """
        A bug, not a bad body: still settle, so no reader waits forever.
        """
        log.failure("Download of {key} broke", reason, key=str(self.key))
        if not self.settled.called:
            self._disarm_abandon()
            self.state = State.FAILED
            self.failure = reason
            self._discard()
            self._notify()
            self.settled.errback(reason)
            self._maybe_close()

    def _discard(self) -> None:
        temp, self._temp = self._temp, None
        if temp is not None:
            temp.discard()

    # -- the readers' side

    @property
    def available(self) -> int:
        if self._spill is not None:
            return self._spill.available
        return super().available

    def read(self, offset: int, length: int) -> bytes:
        spill = self._spill
        if spill is not None and offset >= spill.start:
            return spill.read(offset, length)
        # Never past what readers may have: that would leak the held-back
        # final byte of an unverified body.
        end = self.available if spill is None else spill.start
        length = min(length, end - offset)
        if length <= 0:
            return b""
        return os.pread(self._read_fd, length, offset)

    def file_span(self, offset: int) -> tuple[int, int] | None:
        spill = self._spill
        if self._read_fd < 0 or (spill is not None and offset >= spill.start):
            return None
        # Only what readers may have: the held-back final byte stays back.
        end = self.available if spill is None else spill.start
        return self._read_fd, end - offset

    def subscribe(self, reader: Reader) -> None:
        super().subscribe(reader)
        self._disarm_abandon()

    def unsubscribe(self, reader: Reader) -> None:
        if self._spill is not None:
            self._spill.unsubscribe(reader)
            return
        super().unsubscribe(reader)
        if not self._readers:
            self._arm_abandon()

    # -- abandonment: no client may make the daemon fetch what nobody reads

    def _arm_abandon(self) -> None:
        if self._abandon is None and not self.ended:
            self._abandon = self._disk.reactor.callLater(self._abandon_after, self._abandoned)

    def _disarm_abandon(self) -> None:
        if self._abandon is not None and self._abandon.active():
            self._abandon.cancel()
        self._abandon = None

    def _abandoned(self) -> None:
        self._abandon = None
        if self._readers or self.state is not State.RECEIVING:
            return
        if self._temp is not None and read_elsewhere(self._temp.fd):
            self._arm_abandon()  # another process's clients read it (L{ocicache._fetch._elsewhere})
            return
        if self.size is not None and self._received + self._queued >= self.size * self._keep_fraction:
            return  # most of it is here: worth keeping
        self.fail(Failure(DownloadError(f"nobody read it for {self._abandon_after:g}s")))

    def acquire(self) -> Download:
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1
        self._maybe_close()

    def _maybe_close(self) -> None:
        # Once settled the download leaves the in-flight map, so nobody new
        # can acquire it; the last user closes the descriptor.
        if self._users == 0 and self.ended and self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1


def _write_batch(fd: int, verifier: Verifier, batch: list[bytes]) -> tuple[int, OSError | None]:
    """
    Append C{batch} to C{fd} and feed it to the verifier; runs in the disk
    thread.  hashlib releases the GIL for large updates, so this runs beside the
    reactor rather than in its way.  Returns how many chunks were written
    and hashed whole, and the error that stopped it, if one did: a chunk
    is hashed only once it is entirely on disk, so the caller knows
    exactly which bytes are where.
    """
    for index, chunk in enumerate(batch):
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            return index, e
        verifier.update(chunk)
    return len(batch), None
