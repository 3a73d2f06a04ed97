"""
Where a fill's body goes: a L{Download} into the store, or, when the store
refuses (the cache directory is gone, full or read-only), a L{PassThrough}
that serves the clients already here from memory and keeps nothing.

The sink also keeps the books of what it commits: room is reserved before
the rename (L{Keeper.make_room}) and becomes a stored entry once it is
done, or is given back when the commit fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._store import Kind
from ._download import ABANDON_AFTER, KEEP_FRACTION, Download
from ._fills import Fills
from ._key import Key
from ._passthrough import PassThrough

__all__ = ["DiskSink", "Keeper"]

log = Logger()

K = TypeVar("K", bound=Key)
K_contra = TypeVar("K_contra", bound=Key, contravariant=True)


class Keeper(Protocol[K_contra]):
    """The books of one kind of stored entry: room, and what is stored."""

    async def make_room(self, key: K_contra, size: int) -> bool:
        """Reserve room for C{size} bytes; C{False}: do not keep it."""

    def kept(self, key: K_contra, size: int) -> None:
        """The entry, with its room reserved, is in the store."""

    def not_kept(self, key: K_contra, size: int) -> None:
        """The entry's reserved room is given back (its commit failed)."""


class DiskSink(Generic[K]):
    """
    Makes the sink of each fill of one kind of entry, and tracks the
    downloads among them in L{Fills} so that other clients join them.
    """

    def __init__(self, disk: Disk, fills: Fills[K], keeper: Keeper[K], health: DiskHealth,
                 kind: Kind = Kind.BLOB, abandon_after: float = ABANDON_AFTER,
                 keep_fraction: float = KEEP_FRACTION) -> None:
        self._disk = disk
        self._fills = fills
        self._keeper = keeper
        self._health = health
        self._kind = kind
        self._abandon_after = abandon_after
        self._keep_fraction = keep_fraction

    def open(self, key: K, size: int | None, source: str,
             also: Callable[[Download], Deferred[None] | None] | None = None) -> Download | PassThrough:
        """
        The sink of C{key}'s body (of C{size} bytes, if known) coming from
        C{source} (named in the log).  C{also} starts the fill's other
        sinks on the download (the copy to the S3 store), and returns what
        fires once they are done.
        """
        try:
            download = self.download(key, size)
        except OSError as e:
            # Not even a temp file: this client is still served, from memory.
            self.refused(e)
            passing = PassThrough(key, size)
            passing.settled.addErrback(self._passed, key, source)
            return passing
        self._fills.track(key, download, also(download) if also is not None else None)
        download.settled.addBoth(self._settled, key, download, source)
        return download

    def download(self, key: K, size: int | None) -> Download:
        """A download into a new temp file, not tracked; C{OSError} when the disk cannot give one."""
        reserved: list[int] = []

        async def before_commit(length: int) -> bool:
            # In-flight downloads are not in the store yet, so eviction
            # cannot touch them; the room is reserved until the commit
            # settles.
            kept = await self._keeper.make_room(key, length)
            if kept:
                reserved.append(length)
            return kept

        download = Download(
            self._disk, key, size, before_commit=before_commit, on_disk_error=self._health.failed,
            abandon_after=self._abandon_after, keep_fraction=self._keep_fraction, kind=self._kind,
        )
        download.settled.addBoth(self._books, key, reserved)
        return download

    def refused(self, error: OSError) -> None:
        """The disk could not give a temp file: it is failing."""
        self._health.failed(error)

    def _books(self, result: str | None | Failure, key: K, reserved: list[int]) -> str | None | Failure:
        if reserved:
            if isinstance(result, str):
                self._health.works()
                self._keeper.kept(key, reserved[0])
            else:
                self._keeper.not_kept(key, reserved[0])  # the commit failed: give the room back
        return result

    def _settled(self, result: str | None | Failure, key: K, download: Download, source: str) -> None:
        if isinstance(result, Failure):
            log.warn("Download of {key} from {source} failed: {error}",
                     key=str(key), source=source, error=result.getErrorMessage())

    def _passed(self, failure: Failure, key: K, source: str) -> None:
        log.warn("Pass-through of {key} from {source} failed: {error}",
                 key=str(key), source=source, error=failure.getErrorMessage())
