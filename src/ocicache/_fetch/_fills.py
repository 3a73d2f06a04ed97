"""
The entries being filled: the starts of fetches (one per key however many
ask), the downloads in flight that clients join, and the fills whose
download settled but whose other sinks (the copy to the S3 store) still
run.

A lookup that found nothing in any tier must not start a second fetch of
an entry whose first fetch ended while it looked: it asks L{Fills.changed}
and walks the tiers again.  That closes the race between a slow tier (an
S3 C{HEAD}) and the in-flight map.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, succeed

from ._download import Download
from ._key import Key
from ._passthrough import PassThrough
from ._singleflight import SingleFlight

__all__ = ["Fills", "Watch"]

K = TypeVar("K", bound=Key)


class Fills(Generic[K]):
    """
    The in-flight map of one kind of entry.

    @ivar inflight: the downloads clients may join, by key.
    """

    def __init__(self) -> None:
        self.inflight: dict[K, Download] = {}
        self._starting: SingleFlight[K, Download | PassThrough] = SingleFlight()
        self._finishing: dict[K, Deferred[None]] = {}
        self._watches: dict[K, set[Watch]] = {}

    def start(self, key: K, work: Callable[[], Awaitable[Download | PassThrough]]
              ) -> tuple[Deferred[Download | PassThrough], bool]:
        """
        The start of C{key}'s fetch, shared by everyone who asks while it
        starts, and whether this caller joined one (C{True}).
        """
        # A fill that started while the caller walked the tiers (a slow
        # S3 HEAD) is joined, not fetched a second time.
        download = self.joinable(key)
        if download is not None:
            return succeed(download), True
        return self._starting.call(key, work)

    def joinable(self, key: K) -> Download | None:
        """The download of C{key} a client may read now, if any."""
        download = self.inflight.get(key)
        if download is None or download.passthrough:
            return None
        return download

    def track(self, key: K, download: Download, sinks: Deferred[None] | None = None) -> None:
        """
        C{download} fills C{key}: clients may join it until it settles.
        C{sinks} fires once the fill's other sinks are done (never fails).
        """
        self.inflight[key] = download
        download.settled.addBoth(self._settled, key, download, sinks)

    def _settled(self, result: object, key: K, download: Download, sinks: Deferred[None] | None) -> object:
        if self.inflight.get(key) is download:
            del self.inflight[key]
        if sinks is None or sinks.called:
            self._ended(key)
            return result
        finishing: Deferred[None] = Deferred()
        self._finishing[key] = finishing

        def done(ignored: object) -> None:
            if self._finishing.get(key) is finishing:
                del self._finishing[key]
            self._ended(key)
            finishing.callback(None)

        sinks.addBoth(done)
        return result

    def watch(self, key: K) -> Watch:
        """
        Start watching C{key} for the end of a fill, for the length of one
        walk of the tiers; L{unwatch} when the walk is over.
        """
        watch = Watch()
        self._watches.setdefault(key, set()).add(watch)
        return watch

    def unwatch(self, key: K, watch: Watch) -> None:
        watches = self._watches.get(key)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[key]

    def changed(self, key: K, watch: Watch) -> Deferred[None] | None:
        """
        Whether a fill of C{key} ended while C{watch} watched, or is ending
        now: a Deferred that fires once it has ended (then look again), or
        C{None}: nothing happened, a miss is a miss.
        """
        finishing = self._finishing.get(key)
        if finishing is not None:
            waited: Deferred[None] = Deferred()
            finishing.addBoth(lambda ignored: waited.callback(None))
            return waited
        if watch.ended:
            return succeed(None)
        return None

    def _ended(self, key: K) -> None:
        for watch in self._watches.get(key, ()):
            watch.ended = True


class Watch:
    """One walk's view of a key: whether a fill of it ended meanwhile."""

    ended = False
