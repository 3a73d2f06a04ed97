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

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spec._reference import Digest
from .._storage._bucket import Bucket
from .._storage._s3 import S3Error, S3Unavailable
from .._upstream._body import stop_body
from ._incoming import DownloadError
from ._key import Key
from ._passthrough import PassThrough
from ._source import Reader

__all__ = ["BucketRange"]

log = Logger()


class BucketRange(PassThrough):
    """
    @param digest: what C{key} is stored by in C{bucket}.
    @param receiver: makes the protocol that feeds an S3 body into this
        source (L{write}, L{finish}, L{fail}), with its idle timeout.
    """

    def __init__(self, key: Key, size: int, bucket: Bucket,
                 receiver: Callable[[PassThrough], IProtocol], digest: Digest) -> None:
        super().__init__(key, size)
        self._digest = digest
        self._bucket = bucket
        self._receiver = receiver
        self.origin: int | None = None
        """The offset the S3 body starts at, once requested."""
        # A client leaving early ends it as a failure: nobody waits on that.
        self.settled.addErrback(lambda failure: None)

    def subscribe(self, reader: Reader) -> None:
        super().subscribe(reader)
        if self.origin is None:
            self.origin = self._received = self.start = reader.position
            opening = Deferred.fromCoroutine(self._open(reader.position))
            opening.addErrback(lambda failure: log.failure("Reading {digest} from the S3 store broke", failure,
                                                           digest=str(self._digest)))

    async def _open(self, offset: int) -> None:
        """The S3 C{GET} from C{offset} to the object's end."""
        bucket = self._bucket
        try:
            response = await bucket.guarded(lambda: bucket.client.get(bucket.key(self._digest), offset))
        except (S3Unavailable, S3Error) as e:
            log.warn("Could not read {digest} from the S3 store: {error}", digest=str(self._digest), error=str(e))
            self.fail(Failure(e))
            return
        if self.ended:
            stop_body(response)  # the client left meanwhile
            return
        response.deliverBody(self._receiver(self))

    def _check(self) -> DownloadError | None:
        if self.origin == 0:
            return super()._check()  # the whole blob: length and digest
        if self._received != self.size:
            return DownloadError(f"the S3 store sent {self._received} bytes of {self.size}")
        return None
