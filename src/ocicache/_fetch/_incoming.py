"""
A blob body on its way from the upstream: what a L{Download} (to disk) and
a L{PassThrough} (through memory) share.  Readers subscribe and are told
when bytes arrive; the upstream is paused while the consumer falls behind;
the final byte is held back until the key's verifier and the length pass.
"""

from __future__ import annotations

import enum

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from ._key import Key, Verifier
from ._source import Reader

__all__ = ["DownloadError", "Incoming", "State"]


class DownloadError(Exception):
    """
    A body that cannot become a blob: short, long, or not hashing to its
    digest.  The message is safe to show.
    """


class State(enum.Enum):
    RECEIVING = enum.auto()
    """The body is arriving."""
    SPILLED = enum.auto()
    """(A download) the disk failed: the rest passes through memory."""
    DRAINING = enum.auto()
    """The body is in; the disk thread catches up."""
    COMMITTING = enum.auto()
    """Verified: every byte may be read; room is made and the file renamed."""
    SETTLED = enum.auto()
    """Verified and done: committed, or not kept."""
    FAILED = enum.auto()
    """Bad or incomplete: readers are cut, nothing is kept."""


_ENDED = frozenset({State.SETTLED, State.FAILED})
_VERIFIED = frozenset({State.COMMITTING, State.SETTLED})


class Incoming:
    """
    The upstream side and the readers' side of one body.  L{settled} fires
    with the committed path, or C{None} when the bytes were verified but
    not kept, and fails when they are bad.
    """

    def __init__(self, key: Key, size: int | None, verifier: Verifier | None = None) -> None:
        self.key = key
        self.size = size
        self.state = State.RECEIVING
        self.failure: Failure | None = None
        self.settled: Deferred[str | None] = Deferred()
        self._verifier = verifier if verifier is not None else key.verifier()
        self._received = 0
        self._readers: list[Reader] = []
        self._followers: list[Reader] = []
        self._producer: IPushProducer | None = None
        self._producer_paused = False

    # -- the upstream side

    def attach(self, producer: IPushProducer | None) -> None:
        """The upstream transport, paused while the consumer falls behind."""
        self._producer = producer

    def _pause_upstream(self) -> None:
        if self._producer is not None and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def _resume_upstream(self) -> None:
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()

    def _hand_upstream_to(self, other: Incoming) -> None:
        other._producer, other._producer_paused = self._producer, self._producer_paused
        self._producer = None

    def _stop_upstream(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()

    def _too_long(self, incoming: int) -> bool:
        return self.size is not None and incoming > self.size

    def _check(self) -> DownloadError | None:
        """
        distribution-spec "Pulling blobs": the digest is the content's
        identity, so a body that does not hash to it is not that blob.
        """
        if self.size is not None and self._received != self.size:
            return DownloadError(f"upstream sent {self._received} bytes of {self.size}")
        mismatch = self._verifier.mismatch()
        return DownloadError(mismatch) if mismatch is not None else None

    # -- the readers' side

    @property
    def available(self) -> int:
        if self.state in _VERIFIED or self.size is None:
            return self._received
        # Held back: a failure then cuts a client one byte short of its
        # Content-Length.
        return min(self._received, self.size - 1)

    @property
    def ended(self) -> bool:
        return self.state in _ENDED

    def subscribe(self, reader: Reader) -> None:
        self._readers.append(reader)

    def unsubscribe(self, reader: Reader) -> None:
        try:
            self._readers.remove(reader)
        except ValueError:
            pass

    def follow(self, follower: Reader) -> None:
        """
        Tell C{follower} of progress like a reader, but without keeping the
        body wanted: a download every client left is still abandoned (the
        copy to the S3 store follows this way).
        """
        self._followers.append(follower)

    def unfollow(self, follower: Reader) -> None:
        try:
            self._followers.remove(follower)
        except ValueError:
            pass

    def _notify(self) -> None:
        for reader in [*self._readers, *self._followers]:
            reader.data_arrived()
