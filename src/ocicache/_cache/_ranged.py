"""
One client's byte range of a blob in the S3 store, streamed straight from
an S3 C{GET} with C{Range} (RFC 9110 §14.2): containerd resuming a layer at
offset N gets its bytes at once, instead of waiting for a download of the
first N bytes into a temp file.

The S3 request is made when the client's streamer subscribes, from the
offset it will read first, and it runs to the object's end; the streamer
leaving (its range sent, or the client gone) stops it.  The bytes pass
through the bounded window of a L{PassThrough} and are not kept.  The
object's final byte is held back until the S3 body ended at the object's
length; a range from offset 0 is the whole blob, and its digest is checked
as for any download.  A body cut short cuts the client short of its
C{Content-Length}: nothing partial looks whole.
"""

from __future__ import annotations

from collections.abc import Callable

from .._spec._reference import Digest
from ._incoming import DownloadError
from ._passthrough import PassThrough
from ._source import Reader

__all__ = ["BucketRange"]


class BucketRange(PassThrough):
    """
    @param open_at: starts the S3 C{GET} from an offset, feeding this
        source (L{write}, L{finish}, L{fail}).
    """

    def __init__(self, digest: Digest, size: int, open_at: Callable[[BucketRange, int], None]) -> None:
        super().__init__(digest, size)
        self._open_at = open_at
        self.origin: int | None = None
        """The offset the S3 body starts at, once requested."""
        # A client leaving early ends it as a failure: nobody waits on that.
        self.settled.addErrback(lambda failure: None)

    def subscribe(self, reader: Reader) -> None:
        super().subscribe(reader)
        if self.origin is None:
            self.origin = self._received = self.start = reader.position
            self._open_at(self, reader.position)

    def _check(self) -> DownloadError | None:
        if self.origin == 0:
            return super()._check()  # the whole blob: length and digest
        if self._received != self.size:
            return DownloadError(f"the S3 store sent {self._received} bytes of {self.size}")
        return None
