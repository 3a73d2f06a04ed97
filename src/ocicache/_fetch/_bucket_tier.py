"""
The S3 bucket as a tier, for any kind of entry: one found there is streamed from it through a
L{Download}, so it is verified again on the way, joins the singleflight
and fills the local tier; or, for a C{Range}, streamed from the client's
offset (L{BucketRange}) and not kept.  It is verified by its key's own
verifier (a blob's digest, a git response's pack check), so a corrupt
object is cut short and deleted, never served whole.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar

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
from ._key import Key
from ._passthrough import PassThrough
from ._ranged import BucketRange
from ._result import CacheResult
from ._sink import DiskSink
from ._walk import Found, Hit, Want

__all__ = ["BucketEntries", "BucketTier", "NotInBucket"]

log = Logger()

K = TypeVar("K", bound=Key)


class BucketEntries(Generic[K]):
    """
    Entries of one kind in the S3 store.  When the store is down or fails
    before sending a byte, it holds nothing: the walk goes on (to the
    upstream).

    @param name: the L{Digest} an entry's key is indexed and stored by in
        C{bucket} (a blob's is its digest; another kind's is its key's
        hash under the same grammar).
    """

    def __init__(self, bucket: Bucket, fills: Fills[K], sink: DiskSink[K], reactor: IReactorTime,
                 name: Callable[[K], Digest], on_corrupt: Callable[[K], None] = lambda key: None) -> None:
        self.bucket = bucket
        self._fills = fills
        self._sink = sink
        self._reactor = reactor
        self._on_corrupt = on_corrupt
        self._name = name

    async def find(self, key: K) -> Found | None:
        if not self.bucket.usable:
            return None
        try:
            size = await self.bucket.size(self._name(key))
        except (S3Unavailable, S3Error):
            return None
        return Found(size) if size is not None else None

    async def open(self, key: K, want: Want, found: Found) -> Hit | None:
        size = found.size
        if size is None:
            return None
        accessed = partial(self.bucket.capacity.accessed, self._name(key))
        if want.ranged:
            return Hit(BucketRange(key, size, self.bucket, self.feed, self._name(key)), CacheResult.HIT, accessed)
        starting, joined = self._fills.start(key, lambda: self.stream(key, size))
        try:
            started = await starting
        except NotInBucket:
            return None
        return Hit(started.acquire(), CacheResult.COALESCED if joined else CacheResult.HIT, accessed)

    async def stream(self, key: K, size: int) -> Download | PassThrough:
        """
        A download of C{key}'s object, tracked as in flight; raises
        L{NotInBucket} when it cannot be had after all.
        """
        try:
            response = await self.bucket.open(self._name(key))
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

    def _bad(self, failure: Failure, key: K) -> Failure:
        """
        An object whose body is not its entry (its verifier or the length
        refused it) is deleted, so that the next client fetches it again.
        """
        if failure.check(DownloadError):
            self._on_corrupt(key)
            removing = Deferred.fromCoroutine(self.bucket.capacity.delete([self._name(key)]))
            removing.addErrback(lambda error: log.failure("Could not delete a corrupt object from the S3 store",
                                                          error))
        return failure


class BucketTier(BucketEntries[Digest]):
    """Blobs in the S3 store: stored by their digest."""

    def __init__(self, bucket: Bucket, fills: Fills[Digest], sink: DiskSink[Digest], reactor: IReactorTime,
                 on_corrupt: Callable[[Digest], None] = lambda digest: None) -> None:
        super().__init__(bucket, fills, sink, reactor, _same, on_corrupt)


def _same(digest: Digest) -> Digest:
    return digest


class NotInBucket(NotHere):
    """The bucket cannot serve this entry after all: the upstream will."""
