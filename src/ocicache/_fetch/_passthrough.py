"""
A blob body that passes through memory and is never kept: for when the
cache cannot store it (the cache directory is gone, full or read-only, or
the disk failed in the middle of a download).
"""

from __future__ import annotations

from twisted.python.failure import Failure

from ._incoming import DownloadError, Incoming, State
from ._key import Key, Verifier
from ._source import Reader

__all__ = ["HIGH_WATER", "LOW_WATER", "PassThrough"]

HIGH_WATER = 8 << 20
"""Bytes held for readers (in memory, or queued for the disk) at which the upstream is paused."""

LOW_WATER = 2 << 20
"""Bytes held below which the upstream is resumed."""


class PassThrough(Incoming):
    """
    Bytes C{[start, received)} live in a window that is trimmed as the
    slowest reader advances; the upstream is paused while the window
    holds L{HIGH_WATER} bytes.  So memory stays bounded by the slowest
    reader, and a reader that joins late (below the window) is cut.

    A L{Download} whose disk fails hands its readers and its hash over to
    one of these, starting where the disk stopped (C{start}).
    """

    def __init__(
        self,
        key: Key,
        size: int | None,
        start: int = 0,
        verifier: Verifier | None = None,
        readers: list[Reader] | None = None,
    ) -> None:
        super().__init__(key, size, verifier)
        self._received = start
        self.start = start
        """The lowest offset still in memory."""
        self._window = bytearray()
        if readers is not None:
            self._readers = readers
        self._users = 0

    # -- the upstream side

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        if self._too_long(self._received + len(data)):
            self.fail(Failure(DownloadError(f"upstream sent more than {self.size} bytes")))
            return
        self._verifier.update(data)
        self._window += data
        self._received += len(data)
        if len(self._window) >= HIGH_WATER:
            self._pause_upstream()
        self._notify()

    def take_over(self, chunks: list[bytes], body_ended: bool) -> None:
        """
        Continue a download whose disk failed: C{chunks} are the bytes it
        could not write, and C{body_ended} whether the upstream is done.
        """
        for chunk in chunks:
            self.write(chunk)
        if len(self._window) < HIGH_WATER:
            self._resume_upstream()
        if body_ended:
            self.finish()

    def finish(self) -> None:
        """The body ended cleanly: verify it."""
        if self.ended:
            return
        error = self._check()
        if error is not None:
            self.fail(Failure(error))
            return
        self.size = self._received
        self.state = State.SETTLED
        self._producer = None
        self._notify()
        self.settled.callback(None)

    def fail(self, reason: Failure) -> None:
        if self.ended:
            return
        self.state = State.FAILED
        self.failure = reason
        self._stop_upstream()
        self._window = bytearray()
        self._notify()
        self.settled.errback(reason)

    # -- the readers' side

    def read(self, offset: int, length: int) -> bytes:
        length = min(length, self.available - offset)
        index = offset - self.start
        if length <= 0 or index < 0:
            return b""  # below the window: only a reader that joined too late asks
        data = bytes(self._window[index:index + length])
        # The caller is a reader at offset that is about to move past
        # these bytes: count it there, or a reader that took a large turn
        # would keep that turn in the window, above LOW_WATER, with the
        # upstream paused and nobody left to read.
        self._trim(moved=(offset, offset + len(data)))
        return data

    def file_span(self, offset: int) -> tuple[int, int] | None:
        return None  # in memory only

    def unsubscribe(self, reader: Reader) -> None:
        super().unsubscribe(reader)
        if self.ended:
            return
        if self._readers:
            self._trim()
        else:
            # Nobody is left to pass the bytes to, and none are kept.
            self.fail(Failure(DownloadError("every client of a pass-through download left")))

    def acquire(self) -> PassThrough:
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1

    def _trim(self, moved: tuple[int, int] | None = None) -> None:
        """
        Drop what every reader has passed; resume the upstream once the
        window has room again.  C{moved} is C{(from, to)} for a reader
        whose position is about to move.
        """
        if not self._readers:
            return
        positions = [reader.position for reader in self._readers]
        if moved is not None and moved[0] in positions:
            positions[positions.index(moved[0])] = moved[1]
        drop = min(positions) - self.start
        if drop > 0:
            del self._window[:drop]
            self.start += drop
        if len(self._window) < LOW_WATER:
            self._resume_upstream()
