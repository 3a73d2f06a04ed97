"""
The content-addressed store on disk.

The layout is public, because operators look at it:

    <dir>/blobs/sha256/<first two hex>/<hex>       layer and config blobs
    <dir>/manifests/sha256/<first two hex>/<hex>   manifests and indexes
    <dir>/git/sha256/<first two hex>/<hex>         git responses, by a hash of their request
    <dir>/files/sha256/<first two hex>/<hex>       files of package repositories and file remotes
    <dir>/tmp/                                     downloads in progress

A file under any of them exists only once its bytes passed their key's
verifier (a blob's or manifest's digest; a protocol's own check): downloads are written under C{tmp/} (on the
same filesystem, so the final C{rename} is atomic), fsync'd, and renamed
into place.  Its writer holds a shared C{flock(2)} on a temp file while
it writes (L{TempFile}), and so may those who read it from another
process: a temp file nobody holds a lock on was left by a process that
died, and start-up and the janitor remove only those (L{Store.remove_unused}),
never one another process on the same store is writing.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from enum import Enum
from typing import Protocol

from .._spec._reference import Digest

__all__ = ["Kind", "Store", "StoreKey", "TempFile", "make_store_directory"]


class StoreKey(Protocol):
    """
    What names a stored file: a directory (C{algorithm}) and a file name
    (C{encoded}, lowercase hex), both validated by the key's constructor
    (L{Digest} does), so that no name can escape the store.
    """

    @property
    def algorithm(self) -> str: ...

    @property
    def encoded(self) -> str: ...


class Kind(Enum):
    """What sort of content a stored file holds; names its top directory."""

    BLOB = "blobs"
    MANIFEST = "manifests"
    GIT = "git"
    FILES = "files"


class TempFile:
    """
    A file being written under C{tmp/}.  It is either committed (renamed
    into place) or discarded (unlinked); never both, never neither.  Its
    descriptor holds the file's shared C{flock}, so that no other process
    takes it for a dead one's.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Store:
    """
    Paths and file operations of the on-disk store.  Everything here is a
    quick, local system call; callers run the slow ones (fsync, bulk
    deletes) in a thread.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.quarantine_dir = os.path.join(self.root, "quarantine")

    def prepare(self) -> int:
        """
        Create the directories and remove temp files left by a crash (the
        ones no other process on the store holds).  Return how many were
        removed.
        """
        for kind in Kind:
            os.makedirs(os.path.join(self.root, kind.value, "sha256"), mode=0o755, exist_ok=True)
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        return self.remove_temp_files()

    def remove_temp_files(self) -> int:
        """
        Remove every temp file no process is writing or reading (left by
        one that died): only safe when no download of this process is
        running.
        """
        return sum(1 for entry in self.temp_files() if self.remove_unused(entry))

    @staticmethod
    def remove_unused(entry: os.DirEntry[str]) -> bool:
        """
        Remove the temp file C{entry} unless some process holds it: its
        writer (L{new_temp}) or a reader following it.  The kernel lets go
        of a dead process's lock, so a file nobody holds was left by a
        crash.  It is removed while the probe's exclusive lock is held, so
        a writer that created it meanwhile sees it gone and makes another.
        """
        try:
            if not entry.is_file(follow_symlinks=False):
                return False
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)
        except (BlockingIOError, FileNotFoundError):
            return False
        finally:
            os.close(fd)
        return True

    def path(self, kind: Kind, digest: StoreKey) -> str:
        # Digest.parse has checked the algorithm and that the encoded part
        # is lowercase hex of the right length: no path can escape here.
        return os.path.join(
            self.root, kind.value, digest.algorithm, digest.encoded[:2], digest.encoded
        )

    def open(self, kind: Kind, digest: StoreKey) -> tuple[int, int] | None:
        """
        Open a stored file for reading: C{(fd, size)}, or C{None} when it is
        not in the store.  An open descriptor keeps reading even if the
        file is evicted meanwhile (POSIX unlink semantics).
        """
        try:
            fd = os.open(self.path(kind, digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return fd, os.fstat(fd).st_size

    def size(self, kind: Kind, digest: StoreKey) -> int | None:
        try:
            return os.stat(self.path(kind, digest)).st_size
        except FileNotFoundError:
            return None

    def read(self, kind: Kind, digest: StoreKey) -> bytes | None:
        """
        Read a whole small file (a manifest).
        """
        try:
            with open(self.path(kind, digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def new_temp(self, prefix: str) -> TempFile:
        """A new temp file, its lock held (L{remove_unused}) until it is committed or discarded."""
        while True:
            fd_path = os.path.join(self.tmp_dir, f"{prefix}.{os.urandom(8).hex()}.part")
            fd = os.open(fd_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                # Waits only for another process's probe (remove_unused),
                # which never waits itself.
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.path.samestat(os.stat(fd_path), os.fstat(fd)):
                    return TempFile(fd_path, fd)
            except FileNotFoundError:
                pass  # a probe removed it between its creation and its lock
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def commit(self, temp: TempFile, kind: Kind, digest: StoreKey) -> str:
        """
        fsync C{temp} and rename it into place.  Blocking: call it in a
        thread.
        """
        os.fsync(temp.fd)
        temp.close()
        final = self.path(kind, digest)
        os.makedirs(os.path.dirname(final), mode=0o755, exist_ok=True)
        os.rename(temp.path, final)
        _fsync_dir(os.path.dirname(final))
        return final

    def write_small(self, kind: Kind, digest: StoreKey, data: bytes) -> str:
        """
        Store a small, already verified body (a manifest) atomically.
        Blocking: call it in a thread.
        """
        temp = self.new_temp(kind.value)
        try:
            view = memoryview(data)
            while view:
                written = os.write(temp.fd, view)
                view = view[written:]
            return self.commit(temp, kind, digest)
        except BaseException:
            temp.discard()
            raise

    def remove(self, kind: Kind, digest: StoreKey) -> bool:
        try:
            os.unlink(self.path(kind, digest))
        except FileNotFoundError:
            return False
        return True

    def quarantine(self, kind: Kind, digest: Digest) -> str | None:
        """
        Move a stored file that failed its digest check out of the store,
        into C{quarantine/}, for an operator to look at; C{None} when it
        was gone already.  Blocking.
        """
        os.makedirs(self.quarantine_dir, exist_ok=True)
        target = os.path.join(self.quarantine_dir, f"{digest.algorithm}-{digest.encoded}")
        try:
            os.replace(self.path(kind, digest), target)
        except FileNotFoundError:
            return None
        return target

    def walk(self, kind: Kind) -> Iterator[tuple[Digest, str, int]]:
        """
        Every file stored under C{kind}, as C{(digest, path, size)}.  Names
        that are not digests are skipped: they are not ours.
        """
        top = os.path.join(self.root, kind.value)
        for algorithm in _listdir(top):
            for prefix in _listdir(os.path.join(top, algorithm)):
                for entry in _scandir(os.path.join(top, algorithm, prefix)):
                    try:
                        digest = Digest.parse(f"{algorithm}:{entry.name}")
                    except ValueError:
                        continue
                    if entry.is_file(follow_symlinks=False):
                        yield digest, entry.path, entry.stat().st_size

    def temp_files(self) -> Iterator[os.DirEntry[str]]:
        return _scandir(self.tmp_dir)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _scandir(path: str) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            yield from it
    except FileNotFoundError:
        return


def make_store_directory(directory: str, levels: int = 2) -> None:
    """
    Create C{directory} and up to C{levels - 1} of its parents inside the
    store (C{tmp/locks}, C{shared/slots}), never the store's root: a
    store whose directory vanished stays gone (C{FileNotFoundError}), so
    it is noticed and passed through rather than rebuilt piecemeal.
    """
    parents = [directory]
    for _ in range(levels - 1):
        parents.append(os.path.dirname(parents[-1]))
    for path in reversed(parents):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
