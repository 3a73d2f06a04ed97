"""
The tier "another process on this store is filling it": the fill is
followed by reading that process's growing temp file, with the same
hold-back of the last byte until it noted the body verified
(L{ocicache._fetch._fill_notes}), for C{Range} and C{sendfile} alike.

Growth is noticed by polling, in the disk pool, on a short timer and
only while a client reads: the lock file's notes and an C{fstat} of the
temp file.  The temp file is marked as read
(L{ocicache._storage._reading}), so that its filler does not abandon it.

When the filling process dies (the kernel lets go of its lock, with no
end noted), this process takes the fill over: a fresh fetch under the
key's lock (only one process gets it; the others follow that one), and
its clients go on at the offsets they reached.  The bytes they were
sent from the dead fill are compared with the new fill's before its
last byte is let out, so that a client never receives a complete body
made of two fills that differ.  A fill that failed (its body did not
pass its verifier) fails its followers alike; one that ended before any
body (the upstream refused the filler's request) leaves each follower
to fetch for itself.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._storage._key_locks import Watched
from .._storage._reading import mark_reading
from .._storage._store import Kind, Store
from ._download import Download
from ._errors import FilledElsewhere
from ._fill_notes import FillNotes
from ._host_fills import HostFills
from ._incoming import DownloadError
from ._key import Key
from ._passthrough import PassThrough
from ._result import CacheResult
from ._source import Reader
from ._walk import Found, Hit, Want

__all__ = ["FOLLOW_POLL", "ElsewhereTier", "Following"]

log = Logger()

K = TypeVar("K", bound=Key)

FOLLOW_POLL = 0.02
"""Seconds between two looks at a fill another process makes, while a client waits for it."""

TAKE_OVERS = 3
"""Takeovers one following tries before its clients are cut (each dead filler is one)."""

Refill = Callable[[], Awaitable[Download | PassThrough]]


class ElsewhereTier(Generic[K]):
    """
    Fills of one kind of entry that other processes on this store make:
    one L{Following} per key in this process, however many clients read it.
    """

    def __init__(self, host: HostFills[K], poll: float = FOLLOW_POLL) -> None:
        self._host = host
        self._poll = poll
        self._following: dict[K, Following[K]] = {}

    async def find(self, key: K) -> Found | None:
        if self._host.filling_here(key):
            return None  # this process's own: the in-flight tier's, or being started
        following = self._following.get(key)
        if following is not None and not following.over:
            return Found(following.size)
        watched = await self._host.disk.run(self._host.watch, key)
        if watched is None:
            return None
        lock, notes = watched
        lock.close()
        return Found(notes.size if notes is not None else None)

    async def open(self, key: K, want: Want, found: Found) -> Hit | None:
        following = self._following.get(key)
        if following is None or following.over:
            if self._host.filling_here(key):
                return None
            watched = await self._host.disk.run(self._host.watch, key)
            if watched is None:
                return None
            following = self._following.get(key)
            if following is None or following.over:
                following = Following(self._host, key, watched[0], want.refill, self._poll)
                self._following[key] = following
                following.gone.addCallback(self._forget, key, following)
            else:
                watched[0].close()
        following.acquire()
        try:
            body = await following.ready()
        except BaseException:
            following.release()
            raise
        if not body:
            following.release()
            return None
        return Hit(following, CacheResult.COALESCED)

    def _forget(self, ignored: object, key: K, following: Following[K]) -> None:
        if self._following.get(key) is following:
            del self._following[key]


@frozen
class _Look:
    """What one poll saw of a fill."""

    held: bool
    notes: FillNotes | None
    opened: int | None
    """The body's file, newly opened (a temp file, or the committed entry)."""
    seen: int
    """The length of the body's file now."""


class Following(Generic[K]):
    """
    Another process's fill of one key, as a L{Source} for this process's
    clients; after a takeover, this process's own fill (the C{delegate}).
    """

    def __init__(self, host: HostFills[K], key: K, watched: Watched, refill: Refill | None,
                 poll: float = FOLLOW_POLL) -> None:
        self.key = key
        self._host = host
        self._store: Store = host.disk.store
        self._watched: Watched | None = watched
        self._refill = refill
        self._poll = poll
        self._holder: str | None = None
        self._temp_name: str | None = None
        self._fd = -1
        self._seen = 0
        self._size: int | None = None
        self._verified = False
        self._delegate: Download | PassThrough | None = None
        self._earlier: list[tuple[int, int]] = []
        """The files of fills that died, and how much of each clients may have read."""
        self._comparing = False
        self._failure: Failure | None = None
        self._body: bool | None = None
        self._waiting: list[Deferred[bool]] = []
        self._readers: list[Reader] = []
        self._users = 0
        self._next: IDelayedCall | None = None
        self._looking = False
        self._take_overs = 0
        self._checker = _Checker(self)
        self._closed = False
        self.over = False
        """Whether new clients must not join it: ended, without a body, or closed."""
        self.gone: Deferred[None] = Deferred()
        self._look()

    # -- the Source

    @property
    def size(self) -> int | None:
        return self._delegate.size if self._delegate is not None else self._size

    @property
    def available(self) -> int:
        delegate = self._delegate
        if delegate is not None:
            reached = delegate.available
        elif self._verified and self._size is not None:
            reached = self._size
        elif self._size is None:
            reached = self._seen
        else:
            reached = min(self._seen, self._size - 1)
        size = self.size
        if self._earlier and size is not None:
            reached = min(reached, size - 1)  # until the dead fills' bytes are compared
        return max(reached, 0)

    @property
    def ended(self) -> bool:
        if self.failure is not None:
            return True
        if self._earlier:
            return False
        if self._delegate is not None:
            return self._delegate.ended
        return self._verified

    @property
    def failure(self) -> Failure | None:
        if self._failure is not None:
            return self._failure
        return self._delegate.failure if self._delegate is not None else None

    def read(self, offset: int, length: int) -> bytes:
        length = min(length, self.available - offset)
        if length <= 0:
            return b""
        if self._delegate is not None:
            return self._delegate.read(offset, length)
        if self._fd < 0:
            return b""
        return os.pread(self._fd, length, offset)

    def file_span(self, offset: int) -> tuple[int, int] | None:
        ready = self.available - offset
        if self._delegate is not None:
            span = self._delegate.file_span(offset)
            return None if span is None else (span[0], min(span[1], ready))
        if self._fd < 0:
            return None
        return self._fd, ready

    def subscribe(self, reader: Reader) -> None:
        self._readers.append(reader)
        if self._delegate is not None:
            self._delegate.subscribe(reader)

    def unsubscribe(self, reader: Reader) -> None:
        try:
            self._readers.remove(reader)
        except ValueError:
            pass
        if self._delegate is not None:
            self._delegate.unsubscribe(reader)

    def acquire(self) -> Following[K]:
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self._close()

    def ready(self) -> Deferred[bool]:
        """Fires once there is a body to read (C{True}), or there will be none from here (C{False})."""
        if self._body is not None:
            return succeed(self._body)
        waiting: Deferred[bool] = Deferred()
        self._waiting.append(waiting)
        return waiting

    # -- looking at the fill

    def _schedule(self) -> None:
        if self._next is None and not self._looking and not self.over and self._watched is not None:
            self._next = self._host.disk.reactor.callLater(self._poll, self._look)

    def _look(self) -> None:
        self._next = None
        watched = self._watched
        if watched is None or self.over:
            return
        self._looking = True
        looked = self._host.disk.run(_look, watched, self._fd, self._temp_name, self._store, self._host.kind,
                                     self.key)
        looked.addCallbacks(self._looked, self._broke)

    def _looked(self, look: _Look) -> None:
        self._looking = False
        if self._closed or self._watched is None:
            if look.opened is not None:
                os.close(look.opened)
            self._close_files()
            return
        notes = look.notes
        if notes is None:
            if look.held:
                self._schedule()  # taken, not noted yet
            else:
                self._holder_gone()
            return
        if notes.holder != self._holder:
            if self._holder is not None:
                self._retire()  # its holder died and another took the lock
            self._holder = notes.holder
        if look.opened is not None:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd, self._temp_name, self._size = look.opened, notes.temp, notes.size
            self._has_body(True)
        if self._fd >= 0:
            self._seen = look.seen
        if notes.failed is not None:
            if self._body:
                self._fail(Failure(DownloadError(notes.failed)))
            else:
                self._has_body(False)
        elif notes.verified is not None:
            if self._fd < 0:
                self._has_body(False)  # gone already: the walk finds the entry, or fetches it
                return
            self._size = notes.verified
            self._verified = True
            self._compare()
            self._notify()
            self._end()
        elif not look.held:
            self._holder_gone()
        else:
            self._notify()
            self._schedule()

    def _broke(self, reason: Failure) -> None:
        self._looking = False
        log.failure("Following a fill of {key} broke", reason, key=str(self.key))
        if self._closed:
            self._close_files()
        elif self._body:
            self._fail(reason)
        else:
            self._has_body(False)

    # -- a filler that died

    def _holder_gone(self) -> None:
        """The lock was let go with no end noted: its holder died."""
        if not self._body:
            # No client reads it yet: each looks again, and one process
            # takes the lock.
            self._has_body(False)
            return
        self._retire()
        if self._watched is not None:
            self._watched.close()
            self._watched = None
        self._holder = None
        self._take_overs += 1
        if self._refill is None or self._take_overs > TAKE_OVERS:
            self._fail(Failure(DownloadError("the process filling it died")))
            return
        log.info("The process filling {key} died: this one takes the fill over", key=str(self.key))
        taking = Deferred.fromCoroutine(_started(self._refill))
        taking.addCallbacks(self._took_over, self._not_taken)

    def _took_over(self, filling: Download | PassThrough) -> None:
        if self._closed:
            filling.acquire().release()
            return
        self._delegate = filling.acquire()
        for reader in self._readers:
            filling.subscribe(reader)
        filling.follow(self._checker)
        self._delegated()

    def _not_taken(self, reason: Failure) -> None:
        if self._closed:
            return
        if not reason.check(FilledElsewhere):
            self._fail(reason)
            return
        # Another process took it first: follow that one.
        watching = self._host.disk.run(self._host.watch, self.key)
        watching.addCallbacks(self._rewatch, self._fail)

    def _rewatch(self, watched: tuple[Watched, FillNotes | None] | None) -> None:
        if watched is None and not self._closed:
            # Let go again already: committed meanwhile, or dead too.
            stored = self._store.open(self._host.kind, self.key)
            if stored is None:
                self._holder_gone()
                return
            self._fd, self._size = stored
            self._seen = self._size
            self._verified = True
            self._compare()
            self._notify()
            self._end()
            return
        if watched is None:
            return
        if self._closed:
            watched[0].close()
            return
        self._watched = watched[0]
        self._look()

    def _retire(self) -> None:
        """The current temp file is a dead fill's: kept to compare what clients read from it."""
        if self._fd >= 0:
            self._earlier.append((self._fd, self.available))
            self._fd = -1
        self._temp_name = None
        self._seen = 0

    def _delegated(self) -> None:
        """This process's own fill made progress: compare once it is verified."""
        delegate = self._delegate
        if delegate is not None and delegate.ended and delegate.failure is None:
            self._compare()
        self._notify()
        if delegate is not None and delegate.ended and not self._earlier:
            self._end()

    def _compare(self) -> None:
        """
        The bytes clients read from dead fills must be the verified
        fill's: compared in the disk pool before the last byte goes out.
        """
        if not self._earlier or self._comparing:
            return
        delegate = self._delegate
        span = delegate.file_span(0) if delegate is not None else (self._fd, 0)
        if span is None or span[0] < 0:
            self._fail(Failure(DownloadError("the bytes of a fill that died cannot be compared")))
            return
        self._comparing = True
        comparing = self._host.disk.run(_same, span[0], list(self._earlier))
        comparing.addCallbacks(self._compared, self._fail)

    def _compared(self, same: bool) -> None:
        self._comparing = False
        if not same:
            self._fail(Failure(DownloadError("a fill that died sent other bytes than the verified one")))
            return
        for fd, _ in self._earlier:
            os.close(fd)
        self._earlier = []
        self._notify()
        self._end()

    # -- the end

    def _has_body(self, body: bool) -> None:
        if self._body is None:
            self._body = body
            waiting, self._waiting = self._waiting, []
            for each in waiting:
                each.callback(body)
        if not body:
            self._end()

    def _fail(self, reason: Failure) -> None:
        if self._failure is None:
            self._failure = reason
        self._has_body(False)
        self._notify()
        self._end()

    def _end(self) -> None:
        """No new client joins it; it stays readable for those who have it."""
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._watched is not None and not self._looking:
            self._watched.close()
            self._watched = None
        if not self.over:
            self.over = True
            self.gone.callback(None)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._has_body(False)
        if not self._looking:
            self._close_files()
        if self._delegate is not None:
            self._delegate.unfollow(self._checker)
            self._delegate.release()

    def _close_files(self) -> None:
        if self._watched is not None:
            self._watched.close()
            self._watched = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for fd, _ in self._earlier:
            os.close(fd)
        self._earlier = []

    def _notify(self) -> None:
        for reader in list(self._readers):
            reader.data_arrived()


class _Checker:
    """Follows this process's own fill after a takeover, to compare and end it."""

    position = 0

    def __init__(self, following: Following[K]) -> None:
        self._following = following

    def data_arrived(self) -> None:
        self._following._delegated()


async def _started(refill: Refill) -> Download | PassThrough:
    return await refill()


def _look(watched: Watched, fd: int, name: str | None, store: Store, kind: Kind, key: Key) -> _Look:
    """One look at a fill, in the disk pool: whether it is held, its notes, its file's length."""
    held = watched.held()  # first: a holder that lets go has noted its end before
    notes = FillNotes.parse(watched.notes())
    opened = None
    if notes is not None and notes.temp is not None and notes.temp != name:
        opened = _open(os.path.join(store.tmp_dir, notes.temp))
        if opened is None and notes.verified is not None:
            # Verified and renamed into place before this look.
            opened = _open(store.path(kind, key))
            if opened is not None and os.fstat(opened).st_size != notes.verified:
                os.close(opened)
                opened = None
    current = opened if opened is not None else fd
    seen = os.fstat(current).st_size if current >= 0 else 0
    return _Look(held, notes, opened, seen)


def _open(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    mark_reading(fd)
    return fd


def _same(fd: int, earlier: list[tuple[int, int]]) -> bool:
    """Whether each dead fill's first bytes (as many as clients may have read) are C{fd}'s. Blocking."""
    chunk = 1 << 20
    for old, length in earlier:
        offset = 0
        while offset < length:
            want = min(chunk, length - offset)
            if os.pread(old, want, offset) != os.pread(fd, want, offset):
                return False
            offset += want
    return True
