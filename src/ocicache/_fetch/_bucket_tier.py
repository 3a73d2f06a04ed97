"""
The S3 bucket as a tier: a blob found there is streamed from it through a
L{Download}, so it is verified again on the way, joins the singleflight
and fills the local tier; or, for a C{Range}, streamed from the client's
offset (L{BucketRange}) and not kept.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._spec._reference import Digest
from .._storage._bucket import Bucket
from .._storage._s3 import S3Error, S3Unavailable
from .._upstream._body import stop_body
from ._download import Download
from ._errors import NotHere
from ._feed import Feed
from ._fills import Fills
from ._incoming import DownloadError
from ._passthrough import PassThrough
from ._ranged import BucketRange
from ._result import CacheResult
from ._sink import DiskSink
from ._walk import Found, Hit, Want

__all__ = ["BucketTier", "NotInBucket"]

log = Logger()


class BucketTier:
    """
    Blobs in the S3 store.  When the store is down or fails before
    sending a byte, it holds nothing: the walk goes on (to the upstream).
    """

    def __init__(self, bucket: Bucket, fills: Fills[Digest], sink: DiskSink[Digest], reactor: IReactorTime,
                 on_corrupt: Callable[[Digest], None] = lambda digest: None) -> None:
        self.bucket = bucket
        self._fills = fills
        self._sink = sink
        self._reactor = reactor
        self._on_corrupt = on_corrupt

    async def find(self, key: Digest) -> Found | None:
        if not self.bucket.usable:
            return None
        try:
            size = await self.bucket.size(key)
        except (S3Unavailable, S3Error):
            return None
        return Found(size) if size is not None else None

    async def open(self, key: Digest, want: Want, found: Found) -> Hit | None:
        size = found.size
        if size is None:
            return None
        accessed = partial(self.bucket.capacity.accessed, key)
        if want.ranged:
            return Hit(BucketRange(key, size, self.bucket, self.feed), CacheResult.HIT, accessed)
        starting, joined = self._fills.start(key, lambda: self.stream(key, size))
        try:
            started = await starting
        except NotInBucket:
            return None
        return Hit(started.acquire(), CacheResult.COALESCED if joined else CacheResult.HIT, accessed)

    async def stream(self, key: Digest, size: int) -> Download | PassThrough:
        """
        A download of C{key}'s object, tracked as in flight; raises
        L{NotInBucket} when it cannot be had after all.
        """
        try:
            response = await self.bucket.open(key)
        except S3Unavailable:
            raise NotInBucket() from None
        if response is None:
            raise NotInBucket()
        try:
            download = self._sink.download(key, size)
        except OSError as e:
            self._sink.refused(e)
            stop_body(response)
            raise NotInBucket() from None
        self._fills.track(key, download)
        download.settled.addErrback(self._bad, key)
        download.settled.addErrback(lambda failure: log.warn(
            "Download of {digest} from the S3 store {bucket} failed: {error}",
            digest=str(key), bucket=self.bucket.name, error=failure.getErrorMessage()))
        response.deliverBody(self.feed(download))
        return download

    def feed(self, sink: Download | PassThrough) -> IProtocol:
        """The protocol that feeds an S3 body into a download or a range."""
        return Feed(sink, self._reactor, partial(self.bucket.on_bytes, "downloaded"))

    def _bad(self, failure: Failure, key: Digest) -> Failure:
        """
        An object whose body is not its blob (the digest or the length do
        not match) is deleted, so that the next client fetches it again.
        """
        if failure.check(DownloadError):
            self._on_corrupt(key)
            removing = Deferred.fromCoroutine(self.bucket.capacity.delete([key]))
            removing.addErrback(lambda error: log.failure("Could not delete a corrupt object from the S3 store",
                                                          error))
        return failure


class NotInBucket(NotHere):
    """The bucket cannot serve this blob after all: the upstream will."""
