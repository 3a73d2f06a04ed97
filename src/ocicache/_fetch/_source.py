"""
What a client streamer reads: a L{Source} of blob bytes, either a stored
file or a body still arriving from the upstream.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ._key import Key, Verifier

__all__ = ["ReadInPool", "Reader", "Source", "StoredFile", "VerifiedFile"]

K = TypeVar("K", bound=Key)

ReadInPool = Callable[[Callable[[int, int, int, Verifier], bytes], int, int, int, Verifier], Deferred[bytes]]
"""Runs L{VerifiedFile}'s reading and hashing in the disk pool (L{ocicache._storage._disk.Disk.run})."""


class Reader(Protocol):
    """
    A client of a L{Source}: how far it has read, and a way to tell it
    that more bytes (or a failure) arrived.
    """

    @property
    def position(self) -> int: ...

    def data_arrived(self) -> None: ...


class Source(Protocol):
    """
    Bytes a streamer can read: a stored file, or a download that is still
    growing.
    """

    @property
    def size(self) -> int | None:
        """The final length, when known."""

    @property
    def available(self) -> int:
        """
        How many bytes from offset 0 can be read now.  For a body still
        arriving, the final byte is held back until its digest is
        verified: a client never receives a complete-looking response
        whose bytes turn out not to match.
        """

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

    def file_span(self, offset: int) -> tuple[int, int] | None:
        """
        A descriptor holding the bytes from C{offset} on, and how many of
        them may be sent from it now, for C{sendfile(2)}; C{None} when they
        are not in a file (a pass-through keeps them in memory).
        """

    def subscribe(self, reader: Reader) -> None: ...

    def unsubscribe(self, reader: Reader) -> None: ...

    def release(self) -> None:
        """The streamer is done with this source."""


class StoredFile:
    """
    A committed file, opened once.  The open descriptor keeps working if
    the file is evicted while a client reads it.
    """

    ended = True

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size: int | None = size
        self.available = size
        self.failure: Failure | None = None

    def verified(
        self,
        key: K,
        on_corrupt: Callable[[K], None],
        run: ReadInPool,
        piece: Callable[[], int],
    ) -> VerifiedFile:
        """
        This file, re-verified as it is read (its descriptor moves over);
        C{run} runs the reading and hashing in the disk pool, C{piece()}
        bytes at a time.
        """
        fd, self._fd = self._fd, -1
        return VerifiedFile(fd, self.available, key, lambda: on_corrupt(key), run, piece)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def file_span(self, offset: int) -> tuple[int, int] | None:
        return (self._fd, self.available - offset) if self._fd >= 0 else None

    def subscribe(self, reader: Reader) -> None:
        pass

    def unsubscribe(self, reader: Reader) -> None:
        pass

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class VerifiedFile(StoredFile):
    """
    A stored file re-verified as it is read whole, from the first byte:
    for responses that pass through Python anyway (TLS, the fallback
    streamer), bytes at rest are hashed on the way, and the final byte is
    held back until they match, as for a download.  On a mismatch the
    client is cut short of its C{Content-Length} and C{on_corrupt} is told.

    The reading and hashing run in the disk pool (C{run}), a piece ahead
    of the reader: C{pread} and hashlib release the GIL, so on a second
    core they overlap the reactor's encryption of the piece before.  A
    piece is C{piece()} bytes long, the streamers' write budget's share
    (L{ocicache._web._streamer.WriteBudget}), and a client that is not
    reading holds one piece: what all clients hold ahead is bounded as the
    budget bounds their writes.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        key: Key,
        on_corrupt: Callable[[], None],
        run: ReadInPool,
        piece: Callable[[], int],
    ) -> None:
        super().__init__(fd, size)
        self._key = key
        self._on_corrupt = on_corrupt
        self._run = run
        self._piece = piece
        self._verifier = key.verifier()
        self._size = size
        self.available = 0
        self.ended = False
        self._pieces: deque[bytes] = deque()
        self._pieces_start = 0
        """The offset of the first byte of C{_pieces[0]}."""
        self._hashed = 0
        """Bytes read and hashed so far, all of them in C{_pieces} or consumed."""
        self._consumed = 0
        self._reading = False
        self._released = False
        self._readers: list[Reader] = []
        if size == 0:
            self._settle()
        else:
            self._read_ahead()

    def read(self, offset: int, length: int) -> bytes:
        length = min(length, self.available - offset)
        if length <= 0:
            return b""
        pieces = self._pieces
        while pieces and self._pieces_start + len(pieces[0]) <= offset:
            self._pieces_start += len(pieces.popleft())
        if not pieces or offset < self._pieces_start:
            # Not a sequential read (no streamer does this): from the file,
            # as bytes behind the hashed ones were hashed already.
            return super().read(offset, length)
        piece = pieces[0]
        at = offset - self._pieces_start
        data = piece if at == 0 and length >= len(piece) else piece[at:at + length]
        if at + len(data) == len(piece):
            # Taken whole: held no longer, so a paused client holds one piece.
            self._pieces_start += len(pieces.popleft())
        self._consumed = max(self._consumed, offset + len(data))
        self._read_ahead()
        return data

    def file_span(self, offset: int) -> tuple[int, int] | None:
        # Every byte goes through the hash on its way: never around it.
        return None

    def subscribe(self, reader: Reader) -> None:
        self._readers.append(reader)

    def unsubscribe(self, reader: Reader) -> None:
        try:
            self._readers.remove(reader)
        except ValueError:
            pass

    def release(self) -> None:
        self._released = True
        self._pieces.clear()
        if not self._reading:
            super().release()

    def _read_ahead(self) -> None:
        """Start the next piece unless one is on its way or enough is held."""
        if self._reading or self.ended or self._released or self._hashed >= self._size:
            return
        want = max(MIN_PIECE, min(PIECE, self._piece()))
        if self._hashed - self._consumed >= want:
            return
        self._reading = True
        length = min(want, self._size - self._hashed)
        done = self._run(_read_and_hash, self._fd, self._hashed, length, self._verifier)
        done.addCallbacks(self._piece_read, self._piece_failed)

    def _piece_read(self, data: bytes) -> None:
        self._reading = False
        if self._released:
            super().release()
            return
        if not data:
            self._fail(f"{self._key} is shorter on disk than its {self._size} bytes", corrupt=True)
            return
        if not self._pieces:
            self._pieces_start = self._hashed
        self._pieces.append(data)
        self._hashed += len(data)
        if self._hashed >= self._size:
            self._settle()
            return
        self.available = self._hashed
        self._read_ahead()
        self._notify()

    def _piece_failed(self, reason: Failure) -> None:
        self._reading = False
        if self._released:
            super().release()
            return
        self._fail(f"{self._key} could not be read: {reason.getErrorMessage()}", corrupt=False)

    def _settle(self) -> None:
        """Every byte is hashed: the last one is the client's only if they match."""
        if self._hashed == self._size and self._verifier.mismatch() is None:
            self.available = self._size
            self.ended = True
            self._notify()
        else:
            self._fail(f"{self._key} does not match its bytes on disk", corrupt=True)

    def _fail(self, message: str, corrupt: bool) -> None:
        self.ended = True
        self.available = min(self.available, max(self._size - 1, 0))
        self.failure = Failure(ValueError(message))
        if corrupt:
            self._on_corrupt()
        self._notify()

    def _notify(self) -> None:
        for reader in list(self._readers):
            reader.data_arrived()


PIECE = 1 << 20
"""The longest piece read and hashed at once: the streamers' largest write."""

MIN_PIECE = 64 << 10
"""The shortest: a pool job per few KiB would cost more than the hash."""


def _read_and_hash(fd: int, offset: int, length: int, verifier: Verifier) -> bytes:
    """
    One piece from the file, fed to the verifier; runs in the disk pool,
    one piece at a time per file, so the verifier sees every byte in order.
    """
    data = os.pread(fd, length, offset)
    verifier.update(data)
    return data
