"""
What a client streamer reads: a L{Source} of blob bytes, either a stored
file or a body still arriving from the upstream.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol, TypeVar

from twisted.python.failure import Failure

from ._key import Key

__all__ = ["Reader", "Source", "StoredFile", "VerifiedFile"]

K = TypeVar("K", bound=Key)


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

    def verified(self, key: K, on_corrupt: Callable[[K], None]) -> VerifiedFile:
        """This file, re-verified as it is read (its descriptor moves over)."""
        fd, self._fd = self._fd, -1
        return VerifiedFile(fd, self.available, key, lambda: on_corrupt(key))

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
    """

    def __init__(self, fd: int, size: int, key: Key, on_corrupt: Callable[[], None]) -> None:
        super().__init__(fd, size)
        self._key = key
        self._on_corrupt = on_corrupt
        self._verifier = key.verifier()
        self._hashed = 0
        self._size = size
        self.available = max(size - 1, 0)
        if size == 0:
            self._check(b"")

    def read(self, offset: int, length: int) -> bytes:
        data = super().read(offset, min(length, self.available - offset))
        if offset == self._hashed and data:
            self._verifier.update(data)
            self._hashed += len(data)
            if self._hashed == self._size - 1:
                self._check(os.pread(self._fd, 1, self._hashed))
        return data

    def _check(self, last: bytes) -> None:
        self._verifier.update(last)
        if len(last) == (1 if self._size else 0) and self._verifier.mismatch() is None:
            self.available = self._size
        else:
            self.failure = Failure(ValueError(f"{self._key} does not match its bytes on disk"))
            self._on_corrupt()
