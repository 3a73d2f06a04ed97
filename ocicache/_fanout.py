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

import errno
import hashlib
import os
from typing import Callable, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request
from zope.interface import implementer

from ._reference import Digest
from ._store import Kind, Store, TempFile

__all__ = [
    "CHUNK",
    "Download",
    "DownloadError",
    "Source",
    "StoredFile",
    "Streamer",
]

log = Logger()

CHUNK = 1 << 20
"""Bytes per client write: large writes keep twisted.web near memory speed."""

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
        ...

    def subscribe(self, listener: Callable[[], None]) -> None:
        ...

    def unsubscribe(self, listener: Callable[[], None]) -> None:
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

    def subscribe(self, listener: Callable[[], None]) -> None:
        pass

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        pass

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Download:
    """
    One upstream body on its way into the store.

    Feed it with L{write}, then L{finish} or L{fail}.  L{settled} fires with
    the committed path once the bytes are verified and renamed into place,
    or fails.  Streamers L{acquire} it and read what is on disk meanwhile.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        pool: ThreadPool,
        store: Store,
        digest: Digest,
        size: int | None,
    ) -> None:
        self.digest = digest
        self.size = size
        self.available = 0
        self.failure: Failure | None = None
        self.committed = False
        self.settled: Deferred[str] = Deferred()
        self.settled.addErrback(lambda f: None)  # observers chain their own
        self._reactor = reactor
        self._pool = pool
        self._store = store
        self._hasher = digest.hasher()
        self._temp: TempFile | None = store.new_temp(digest.encoded[:16])
        self._read_fd = os.open(self._temp.path, os.O_RDONLY | os.O_CLOEXEC)
        self._users = 0
        self._listeners: list[Callable[[], None]] = []
        self._queue: list[bytes] = []
        self._queued = 0
        self._writing = False
        self._body_done = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        self._observers: list[Deferred[str]] = []

    # -- the upstream side

    def attach(self, producer: IPushProducer) -> None:
        """
        The upstream transport, paused when the disk thread falls behind.
        """
        self._producer = producer

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        self._queue.append(data)
        self._queued += len(data)
        if self.size is not None and self.available + self._queued > self.size:
            self.fail(Failure(DownloadError(f"upstream sent more than {self.size} bytes")))
            return
        if self._queued >= HIGH_WATER and self._producer and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()
        self._kick()

    def finish(self) -> None:
        """
        The upstream body ended cleanly: verify and commit once the disk
        thread has caught up.
        """
        self._body_done = True
        self._kick()

    def fail(self, reason: Failure) -> None:
        if self.ended:
            return
        self.failure = reason
        producer, self._producer = self._producer, None
        if producer is not None and not self._body_done:
            producer.stopProducing()
        self._queue = []
        self._queued = 0
        if not self._writing:
            self._discard()
        self._notify()
        self.settled.errback(reason)
        self._maybe_close()

    # -- the disk side

    def _kick(self) -> None:
        if self._writing or self.ended:
            return
        if self._queue:
            batch: list[bytes] = []
            size = 0
            while self._queue and size < BATCH:
                chunk = self._queue.pop(0)
                batch.append(chunk)
                size += len(chunk)
            self._queued -= size
            self._writing = True
            assert self._temp is not None
            fd, hasher = self._temp.fd, self._hasher
            written = deferToThreadPool(self._reactor, self._pool, _write_batch, fd, hasher, batch)  # type: ignore[arg-type]
            written.addCallbacks(self._written, self._write_failed)
        elif self._body_done:
            self._verify()

    def _written(self, count: int) -> None:
        self._writing = False
        if self.ended:
            self._discard()
            return
        self.available += count
        self._notify()
        if self._producer_paused and self._queued < LOW_WATER and self._producer:
            self._producer_paused = False
            self._producer.resumeProducing()
        self._kick()

    def _write_failed(self, reason: Failure) -> None:
        self._writing = False
        error = reason.value
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
            log.error("Cannot write {digest} to the cache: {error}", digest=str(self.digest),
                      error=reason.getErrorMessage())
        self.fail(reason)

    def _verify(self) -> None:
        # distribution-spec "Pulling blobs": the digest is the content's
        # identity, so a body that does not hash to it is not that blob.
        if self.size is not None and self.available != self.size:
            self.fail(Failure(DownloadError(
                f"upstream sent {self.available} bytes of {self.size}")))
            return
        if self._hasher.hexdigest() != self.digest.encoded:
            self.fail(Failure(DownloadError(f"upstream body does not match {self.digest}")))
            return
        # The length is now known even when the upstream did not say.
        self.size = self.available
        temp, self._temp = self._temp, None
        assert temp is not None
        committing = deferToThreadPool(
            self._reactor, self._pool, self._store.commit, temp, Kind.BLOB, self.digest  # type: ignore[arg-type]
        )
        committing.addCallbacks(self._committed, self._commit_failed, errbackArgs=(temp,))

    def _committed(self, path: str) -> None:
        self.committed = True
        self._notify()
        self.settled.callback(path)
        self._maybe_close()

    def _commit_failed(self, reason: Failure, temp: TempFile) -> None:
        # The bytes are verified and every reader can still finish from its
        # open descriptor; they are just not kept.
        log.error("Cannot commit {digest}: {error}", digest=str(self.digest),
                  error=reason.getErrorMessage())
        temp.discard()
        self._notify()
        self.settled.errback(reason)
        self._maybe_close()

    def _discard(self) -> None:
        temp, self._temp = self._temp, None
        if temp is not None:
            temp.discard()

    # -- the client side

    @property
    def ended(self) -> bool:
        return self.failure is not None or self.committed or (
            self._body_done and self._temp is None
        )

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._read_fd, length, offset)

    def acquire(self) -> "Download":
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1
        self._maybe_close()

    def _maybe_close(self) -> None:
        # Once settled fires the download leaves the in-flight map, so
        # nobody new can acquire it; the last user closes the descriptor.
        if self._users == 0 and self.settled.called and self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()


def _write_batch(fd: int, hasher: "hashlib._Hash", batch: list[bytes]) -> int:
    """
    Append C{batch} to C{fd} and hash it; runs in the disk thread.
    hashlib releases the GIL for large updates, so this runs beside the
    reactor rather than in its way.
    """
    total = 0
    for chunk in batch:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        hasher.update(chunk)
        total += len(chunk)
    return total


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
    ) -> None:
        self._request = request
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

    def start(self) -> Deferred[int]:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda f: self.stopProducing())
        self._source.subscribe(self._data_arrived)
        self._pump()
        return self.done

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
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

    def _data_arrived(self) -> None:
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
            if end is not None and self._pos >= end:
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
            data = source.read(self._pos, min(CHUNK, limit - self._pos))
            if not data:
                # The file is shorter than promised: never pretend otherwise.
                self._abort()
                return
            self._pos += len(data)
            self.sent += len(data)
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
        self._waiting = False
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._source.unsubscribe(self._data_arrived)
        self._source.release()
        self.done.callback(self.sent)
