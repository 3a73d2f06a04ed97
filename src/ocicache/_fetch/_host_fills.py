"""
One fill per key for every process on a store: before a miss asks the
upstream, it takes the key's lock (L{ocicache._storage._key_locks}), and
notes in it what the other processes need to follow the fill
(L{ocicache._fetch._fill_notes}): where the body goes, once the upstream
answered, and how the fill ended.  A process that finds the lock taken
follows that fill instead (L{ocicache._fetch._elsewhere}).

The lock is the host's, and comes before the fleet's claim: one process
of a node takes the claim, the node's others follow it here.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from twisted.logger import Logger

from .._storage._disk import Disk
from .._storage._key_locks import KeyLock, KeyLocks, Watched
from .._storage._store import Kind
from . import _fill_notes as notes
from ._download import Download
from ._errors import FilledElsewhere
from ._fill_notes import FillNotes
from ._incoming import State
from ._key import Key
from ._passthrough import PassThrough

__all__ = ["HostFills"]

log = Logger()

K = TypeVar("K", bound=Key)


class HostFills(Generic[K]):
    """The key locks of one kind of entry, as this process takes and follows them."""

    def __init__(self, disk: Disk, kind: Kind) -> None:
        self.disk = disk
        self.kind = kind
        self._locks = KeyLocks(disk.store.root)
        self._held: dict[K, KeyLock] = {}

    def filling_here(self, key: K) -> bool:
        """Whether this process holds C{key}'s lock: its fill is this process's own."""
        return key in self._held

    def watch(self, key: K) -> tuple[Watched, FillNotes | None] | None:
        """
        C{key}'s lock file and its notes, when another holder has it, or
        C{None}.  Blocking: run it in the disk pool.
        """
        watched = self._locks.watch(self.kind, key)
        if watched is None:
            return None
        if not watched.held():
            watched.close()
            return None
        return watched, FillNotes.parse(watched.notes())

    async def locked(self, key: K, miss: Callable[[], Awaitable[Download | PassThrough]]
                     ) -> Download | PassThrough:
        """
        C{miss}'s fill, under C{key}'s lock; raises L{FilledElsewhere} when
        another process holds it.
        """
        try:
            lock = await self.disk.run(self._take, key)
        except OSError as e:
            # The store refuses even a lock file (full, read-only): fill as
            # one process would; the sink finds out what the disk allows.
            log.warn("Could not take the lock of {key}: {error}", key=str(key), error=str(e))
            return await miss()
        if lock is None:
            raise FilledElsewhere()
        self._held[key] = lock
        try:
            filling = await miss()
        except BaseException as e:
            # Before any body: the failure is this request's (its
            # repository, its credentials); others ask for themselves.
            self._let_go(key, lock, notes.failed(str(e) or type(e).__name__))
            raise
        if isinstance(filling, Download) and not filling.passthrough and not filling.ended:
            _note(lock, notes.temp(filling.temp_path, filling.size))
            noter = _Verified(lock, filling)
            filling.follow(noter)
            filling.settled.addBoth(self._settled, key, lock, filling, noter)
        elif isinstance(filling, Download) and filling.committed:
            self._let_go(key, lock, None)  # done already (an empty body): in the store
        else:
            # In memory only: nothing another process can read.  Once it
            # ends they fetch for themselves.
            filling.settled.addBoth(self._passed, key, lock)
        return filling

    def _take(self, key: K) -> KeyLock | None:
        """
        The lock, noted with a new holder's token, or C{None}: another
        holder has it, or the entry is in the store already.  The temp
        file of a holder that died without letting go is removed.
        Blocking.
        """
        lock = self._locks.take(self.kind, key)
        if lock is None:
            return None
        if self.disk.store.size(self.kind, key) is not None:
            # Committed by a holder that let go since this walk looked:
            # the walk looks again and finds it.
            lock.release()
            return None
        dead = FillNotes.parse(lock.left)
        if dead is not None and dead.temp is not None and dead.verified is None:
            try:
                os.unlink(os.path.join(self.disk.store.tmp_dir, dead.temp))
            except FileNotFoundError:
                pass
        try:
            lock.note(notes.holder(os.urandom(8).hex()))
        except BaseException:
            lock.release()
            raise
        return lock

    def _settled(self, result: object, key: K, lock: KeyLock, download: Download, noter: _Verified) -> object:
        download.unfollow(noter)
        noter.data_arrived()
        # The download's own end, not the callback's result: callbacks
        # before this one (the sink's log) may have consumed its failure.
        outcome = None
        if download.failure is not None:
            outcome = notes.failed(download.failure.getErrorMessage())
        elif download.passthrough:
            outcome = notes.failed("the disk failed: passed through memory, not kept")
        self._let_go(key, lock, outcome)
        return result

    def _passed(self, result: object, key: K, lock: KeyLock) -> object:
        self._let_go(key, lock, notes.failed("passed through memory, not kept"))
        return result

    def _let_go(self, key: K, lock: KeyLock, outcome: bytes | None) -> None:
        """
        Note how the fill ended, and let go.  A few quick system calls,
        made here rather than in the pool: the note must come before the
        release, and the release before this process looks again.
        """
        if self._held.get(key) is lock:
            del self._held[key]
        try:
            if outcome is not None:
                _note(lock, outcome)
        finally:
            lock.release()


class _Verified:
    """Notes a download's verification as soon as it passes, before its commit."""

    position = 0

    def __init__(self, lock: KeyLock, download: Download) -> None:
        self._lock = lock
        self._download = download
        self._noted = False

    def data_arrived(self) -> None:
        download = self._download
        if (not self._noted and self._lock.held and download.size is not None and not download.passthrough
                and download.state in (State.COMMITTING, State.SETTLED)):
            self._noted = True
            _note(self._lock, notes.verified(download.size))


def _note(lock: KeyLock, line: bytes) -> None:
    """
    Note C{line}; a disk that refuses it (full) costs the others only
    their wait: they see the fill end with no note, and fetch for
    themselves.
    """
    try:
        lock.note(line)
    except OSError as e:
        log.warn("Could not note a fill's progress in {path}: {error}", path=lock.path, error=str(e))
