"""
The fan-out streamer: one upstream body, many clients, one file.

A L{Download} takes the bytes of one upstream response and hands them to a
disk thread, which appends them to a temp file and hashes them.  Clients
never read from the upstream connection: each is a L{Streamer}, an
L{IPushProducer} registered on its own request, reading the temp file at
the pace its own connection drains.  A slow client therefore slows nobody
else, a client that hangs up stops nothing but itself, and a client that
joins late starts from byte 0 of what is already on disk.

The upstream is paused only when the disk writer falls behind, so memory
stays bounded by L{HIGH_WATER} per download, whatever the blob size or the
number of clients.

When the upstream fails, or the finished body does not match its digest
or length, every client that has not received all its bytes has its
connection aborted: it sees a transfer truncated against its
C{Content-Length}, never a complete-looking bad blob.  Nothing is
committed.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request
from zope.interface import implementer

from .._spec._reference import Digest
from .._storage._store import Kind, Store, TempFile

__all__ = [
    "CHUNK",
    "MIN_CHUNK",
    "Download",
    "DownloadError",
    "Reader",
    "Source",
    "StoredFile",
    "Streamer",
    "WriteBudget",
]

log = Logger()

CHUNK = 1 << 20
"""
Bytes per client write for a client that keeps up: large writes keep
twisted.web near memory speed.
"""

MIN_CHUNK = 64 << 10
"""Bytes per write for a slow client."""

SLOW_RATE = 64 << 20
"""
Bytes per second below which a client counts as slow.  A write waits in
Twisted's buffer, in user space, until the client's socket takes it: 1 MiB
per slow client would make memory grow with the number of clients.
"""

HIGH_WATER = 16 << 20
"""Bytes queued for the disk thread at which the upstream is paused."""

LOW_WATER = 4 << 20
"""Bytes queued for the disk thread below which it is resumed."""

BATCH = 4 << 20
"""Bytes handed to the disk thread at once; clients see progress per batch."""

_CHUNKS_PER_TURN = 8
"""Writes one streamer makes before yielding the reactor to others."""


@frozen
class DownloadError(Exception):
    """
    A download that cannot become a blob: a short or long body, or one that
    does not hash to its digest.
    """

    reason: str

    def __str__(self) -> str:
        return self.reason


class Reader(Protocol):
    """
    A client of a L{Source}: how far it has read, and a way to tell it
    that more bytes (or a failure) arrived.
    """

    @property
    def position(self) -> int:
        ...

    def data_arrived(self) -> None:
        ...


class Source(Protocol):
    """
    Bytes a L{Streamer} can read: a stored file, or a download that is
    still growing.
    """

    @property
    def size(self) -> int | None:
        """The final length, when known."""

    @property
    def available(self) -> int:
        """How many bytes from offset 0 can be read now."""

    @property
    def ended(self) -> bool:
        """Whether C{available} will grow no more (complete or failed)."""

    @property
    def failure(self) -> Failure | None:
        """Why the bytes are bad, if they are."""

    def read(self, offset: int, length: int) -> bytes:
        """
        Up to C{length} bytes from C{offset}, which is below C{available};
        C{b""} when those bytes are gone.
        """

    def subscribe(self, reader: Reader) -> None:
        ...

    def unsubscribe(self, reader: Reader) -> None:
        ...

    def release(self) -> None:
        """The streamer is done with this source."""


class StoredFile:
    """
    A committed file, opened once.  The open descriptor keeps working if
    the file is evicted while a client reads it.
    """

    failure = None
    ended = True

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size: int | None = size
        self.available = size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def subscribe(self, reader: Reader) -> None:
        pass

    def unsubscribe(self, reader: Reader) -> None:
        pass

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Download:
    """
    One upstream body on its way into the store.

    Feed it with L{write}, then L{finish} or L{fail}.  L{settled} fires
    once the bytes are verified: with the committed path, or with C{None}
    when they were verified but not kept (too large for the cache, or the
    disk failed).  It fails when the bytes are bad.  Streamers L{acquire}
    it and read what has arrived meanwhile.

    When the disk fails mid-download (ENOSPC, EIO), the download becomes a
    pass-through: the clients already reading get the rest from a memory
    window, trimmed as the slowest of them advances, and the upstream is
    paused while that window is full.  Nothing is committed.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        pool: ThreadPool,
        store: Store,
        digest: Digest,
        size: int | None,
        before_commit: Callable[[Digest, int], Awaitable[bool]] | None = None,
        on_disk_error: Callable[[OSError], None] = lambda error: None,
    ) -> None:
        self.digest = digest
        self.size = size
        self._received = 0
        self._verified = False
        self.failure: Failure | None = None
        self.committed = False
        self.settled: Deferred[str | None] = Deferred()
        self._reactor = reactor
        self._pool = pool
        self._store = store
        self._before_commit = before_commit
        self._on_disk_error = on_disk_error
        self._hasher = digest.hasher()
        self._temp: TempFile | None = store.new_temp(digest.encoded[:16])
        self.temp_path = self._temp.path
        self._read_fd = os.open(self._temp.path, os.O_RDONLY | os.O_CLOEXEC)
        self._users = 0
        self._readers: list[Reader] = []
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._in_flight = 0
        self._writing = False
        self._body_done = False
        self._verifying = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        # Pass-through after a disk failure: bytes [_disk_end, available)
        # live in _window, which starts at offset _window_start.
        self.passthrough = False
        self._disk_end = 0
        self._window = bytearray()
        self._window_start = 0

    # -- the upstream side

    def attach(self, producer: IPushProducer) -> None:
        """
        The upstream transport, paused when the disk thread (or, in
        pass-through, the slowest client) falls behind.
        """
        self._producer = producer

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        if self.size is not None and self._received + self._in_flight + self._queued + len(data) > self.size:
            self.fail(Failure(DownloadError(f"upstream sent more than {self.size} bytes")))
            return
        if self.passthrough:
            self._hasher.update(data)
            self._window += data
            self._received += len(data)
            if len(self._window) >= HIGH_WATER:
                self._pause_upstream()
            self._notify()
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
        self._body_done = True
        self._kick()

    def fail(self, reason: Failure) -> None:
        # Once verified the bytes are good: a late failure (a client's
        # upstream connection closing) must not unsettle a commit.
        if self.ended or self._verified:
            return
        self.failure = reason
        producer, self._producer = self._producer, None
        if producer is not None and not self._body_done:
            producer.stopProducing()
        self._queue.clear()
        self._queued = 0
        self._window = bytearray()
        if not self._writing:
            self._discard()
        self._notify()
        self.settled.errback(reason)
        self._maybe_close()

    def _pause_upstream(self) -> None:
        if self._producer is not None and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def _resume_upstream(self) -> None:
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()

    # -- the disk side

    def _kick(self) -> None:
        if self._writing or self.ended or self._verifying:
            return
        if self._queue:
            batch: list[bytes] = []
            size = 0
            while self._queue and size < BATCH:
                chunk = self._queue.popleft()
                batch.append(chunk)
                size += len(chunk)
            self._queued -= size
            self._in_flight = size
            self._writing = True
            assert self._temp is not None
            written = deferToThreadPool(
                self._reactor, self._pool, _write_batch, self._temp.fd, self._hasher, batch  # type: ignore[arg-type]
            )
            written.addCallback(self._written, batch)
        elif self._body_done:
            self._verifying = True
            Deferred.fromCoroutine(self._verify()).addErrback(self._broken)

    def _written(self, outcome: tuple[int, OSError | None], batch: list[bytes]) -> None:
        self._writing = False
        self._in_flight = 0
        done, error = outcome
        if self.ended:
            self._discard()
            return
        self._received += sum(len(chunk) for chunk in batch[:done])
        if error is not None:
            self._to_passthrough(error, batch[done:])
        elif self._queued < LOW_WATER:
            self._resume_upstream()
        self._notify()
        self._kick()

    def _to_passthrough(self, error: OSError, unwritten: list[bytes]) -> None:
        """
        The disk failed: keep the clients going from memory, keep nothing.
        """
        self._on_disk_error(error)
        self.passthrough = True
        self._disk_end = self._received
        self._window_start = self._received
        for chunk in [*unwritten, *self._queue]:
            self._hasher.update(chunk)
            self._window += chunk
        self._received += len(self._window)
        self._queue.clear()
        self._queued = 0
        if len(self._window) >= HIGH_WATER:
            self._pause_upstream()
        else:
            self._resume_upstream()

    async def _verify(self) -> None:
        # distribution-spec "Pulling blobs": the digest is the content's
        # identity, so a body that does not hash to it is not that blob.
        if self.size is not None and self._received != self.size:
            self.fail(Failure(DownloadError(f"upstream sent {self._received} bytes of {self.size}")))
            return
        if self._hasher.hexdigest() != self.digest.encoded:
            self.fail(Failure(DownloadError(f"upstream body does not match {self.digest}")))
            return
        # The length is now known even when the upstream did not say.
        self.size = self._received
        self._verified = True
        self._notify()
        temp, self._temp = self._temp, None
        assert temp is not None
        keep = not self.passthrough
        if keep and self._before_commit is not None:
            try:
                keep = await self._before_commit(self.digest, self.size)
            except Exception:
                log.failure("Could not make room for {digest}", digest=str(self.digest))
                keep = False
        path: str | None = None
        if keep:
            try:
                path = await deferToThreadPool(
                    self._reactor, self._pool, self._store.commit, temp, Kind.BLOB, self.digest  # type: ignore[arg-type]
                )
            except OSError as e:
                # Every reader can still finish from the open descriptor:
                # the bytes are verified, just not kept.
                self._on_disk_error(e)
        if path is None:
            temp.discard()
        self.committed = path is not None
        self._notify()
        self.settled.callback(path)
        self._maybe_close()

    def _broken(self, reason: Failure) -> None:
        """
        A bug, not a bad body: still settle, so no reader waits forever.
        """
        log.failure("Download of {digest} broke", reason, digest=str(self.digest))
        if not self.settled.called:
            self.failure = reason
            self._discard()
            self._notify()
            self.settled.errback(reason)
            self._maybe_close()

    def _discard(self) -> None:
        temp, self._temp = self._temp, None
        if temp is not None:
            temp.discard()

    # -- the client side

    @property
    def available(self) -> int:
        """
        Bytes readers may have.  Until the digest is verified, the final
        byte is held back: a client must never receive a complete-looking
        response whose bytes turn out not to match (a failure then cuts
        its connection one byte short of its C{Content-Length}).
        """
        if self._verified or self.size is None:
            return self._received
        return min(self._received, self.size - 1)

    @property
    def ended(self) -> bool:
        return self.failure is not None or self.settled.called

    def read(self, offset: int, length: int) -> bytes:
        # Never past what readers may have: that would leak the held-back
        # final byte of an unverified body.
        length = min(length, self.available - offset)
        if length <= 0:
            return b""
        if offset < self._disk_end or not self.passthrough:
            end = self._disk_end if self.passthrough else self.available
            return os.pread(self._read_fd, min(length, end - offset), offset)
        start = offset - self._window_start
        if start < 0:
            return b""  # trimmed: only a reader that joined too late asks
        data = bytes(self._window[start:start + length])
        self._trim()
        return data

    def _trim(self) -> None:
        """
        Drop window bytes every reader has passed; resume the upstream when
        the window has room again.
        """
        if not self._readers:
            return
        lowest = min(reader.position for reader in self._readers)
        drop = lowest - self._window_start
        if drop > 0:
            del self._window[:drop]
            self._window_start += drop
        if len(self._window) < LOW_WATER:
            self._resume_upstream()

    def acquire(self) -> Download:
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1
        self._maybe_close()

    def _maybe_close(self) -> None:
        # Once settled fires the download leaves the in-flight map, so
        # nobody new can acquire it; the last user closes the descriptor.
        if self._users == 0 and self.ended and self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
            self._window = bytearray()

    def subscribe(self, reader: Reader) -> None:
        self._readers.append(reader)

    def unsubscribe(self, reader: Reader) -> None:
        try:
            self._readers.remove(reader)
        except ValueError:
            pass
        if self.passthrough and not self.ended:
            if self._readers:
                self._trim()
            else:
                # Nobody is left to pass the bytes to, and none are kept.
                self.fail(Failure(DownloadError("every client of a pass-through download left")))

    def _notify(self) -> None:
        for reader in list(self._readers):
            reader.data_arrived()


def _write_batch(fd: int, hasher: hashlib._Hash, batch: list[bytes]) -> tuple[int, OSError | None]:
    """
    Append C{batch} to C{fd} and hash it; runs in the disk thread.
    hashlib releases the GIL for large updates, so this runs beside the
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
        hasher.update(chunk)
    return len(batch), None


class WriteBudget:
    """
    The bytes all streamers may have waiting in Twisted's buffers at once.
    Each streamer's write size is capped at its share: with a few clients
    every write is L{CHUNK}; with many, writes shrink so that memory stays
    bounded whatever the number of clients.
    """

    def __init__(self, total: int = 16 << 20) -> None:
        self.total = total
        self.streams = 0

    @property
    def share(self) -> int:
        return max(MIN_CHUNK, min(CHUNK, self.total // max(self.streams, 1)))


@implementer(IPushProducer)
class Streamer:
    """
    Sends C{[start, end)} of a L{Source} to one client, paced by that
    client's connection.

    C{end} is C{None} when the length is not known in advance: the
    streamer then sends until the source ends.  C{done} fires with the
    number of bytes sent once the response is finished or abandoned.
    """

    def __init__(
        self,
        request: Request,
        source: Source,
        start: int,
        end: int | None,
        reactor: IReactorTime,
        on_bytes: Callable[[int], None] = lambda count: None,
        budget: WriteBudget | None = None,
    ) -> None:
        self._request = request
        self._budget = budget if budget is not None else WriteBudget()
        self._source = source
        self._pos = start
        self._end = end
        self._reactor = reactor
        self._on_bytes = on_bytes
        self._paused = False
        self._stopped = False
        self._waiting = False
        self._scheduled: IDelayedCall | None = None
        self.sent = 0
        self.done: Deferred[int] = Deferred()
        # The write size adapts to how fast this client drains: see
        # resumeProducing.
        self.chunk = CHUNK
        self._burst = 0
        self._paused_at: float | None = None

    def start(self) -> Deferred[int]:
        self._budget.streams += 1
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda f: self.stopProducing())
        self._source.subscribe(self)
        self._pump()
        return self.done

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True
        self._paused_at = self._reactor.seconds()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._paused_at is not None:
            # The bytes written since the last resume drained in this time:
            # a slow client gets smaller writes, a fast one larger again.
            waited = self._reactor.seconds() - self._paused_at
            if waited > 0 and self._burst / waited < SLOW_RATE:
                self.chunk = max(MIN_CHUNK, self.chunk // 2)
            else:
                self.chunk = min(CHUNK, self.chunk * 2)
            self._paused_at = None
        self._burst = 0
        self._schedule()

    def stopProducing(self) -> None:
        """
        The client went away: stop reading, and let the download go on for
        the others and for the cache.
        """
        self._close()

    # the pump

    def _schedule(self) -> None:
        if self._scheduled is None and not self._stopped:
            self._scheduled = self._reactor.callLater(0, self._pump)

    @property
    def position(self) -> int:
        return self._pos

    def data_arrived(self) -> None:
        if self._source.failure is not None:
            # Cut at once, even a paused client: it must not wait for bytes
            # that will never come.
            self._abort()
        elif self._waiting and not self._paused:
            self._waiting = False
            self._schedule()

    def _pump(self) -> None:
        self._scheduled = None
        if self._stopped:
            return
        source = self._source
        for _ in range(_CHUNKS_PER_TURN):
            if self._paused or self._stopped:
                return
            if source.failure is not None:
                self._abort()
                return
            end = self._end if self._end is not None else source.size
            # "available" reaching the end means verified: even an empty
            # body waits for its digest check.
            if end is not None and self._pos >= end and source.available >= end:
                self._finish()
                return
            limit = source.available if end is None else min(end, source.available)
            if self._pos >= limit:
                if source.ended and end is None:
                    self._finish()
                elif source.ended and source.available < (end or 0):
                    self._abort()
                else:
                    self._waiting = True
                return
            data = source.read(self._pos, min(self.chunk, self._budget.share, limit - self._pos))
            if not data:
                # The file is shorter than promised: never pretend otherwise.
                self._abort()
                return
            self._pos += len(data)
            self.sent += len(data)
            self._burst += len(data)
            self._on_bytes(len(data))
            self._request.write(data)
        self._schedule()

    def _finish(self) -> None:
        self._request.unregisterProducer()
        self._request.finish()
        self._close()

    def _abort(self) -> None:
        """
        Cut the connection so the client sees a truncated transfer rather
        than a complete-looking one.
        """
        transport = getattr(self._request, "transport", None)
        self._close()
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()

    def _close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._budget.streams -= 1
        self._waiting = False
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._source.unsubscribe(self)
        self._source.release()
        self.done.callback(self.sent)
