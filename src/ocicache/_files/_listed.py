"""
What the cached indexes list: for each package path of a remote, the
checksum its bytes must have (L{ocicache._files._indexes}).

An index is read once per version and process: when its download is
verified (kept or not: with no room on the local disk, as on the S3
backend without a local tier, it is read from the download's own
descriptor before the temp file goes), or the first time it is served
from the store after a start.  Reading runs in
the disk pool; a package fetched meanwhile waits for the readings of its
remote to end, so the C{.deb} apt asks for right after C{apt-get update}
is checked against the index that update just brought.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._fetch._download import Download
from .._storage._disk import Disk
from .._storage._store import Kind
from ._config import RemoteConfig
from ._indexes import index_kind, parse_index
from ._key import Expected, FileKey

__all__ = ["Listed"]

log = Logger()

MAX_LISTED = 500_000
"""
Packages remembered at most, all remotes together: about 500 bytes each,
so 250 MiB at worst; Debian's main suite lists some 65,000 per architecture.
"""


class Listed:
    def __init__(self, disk: Disk) -> None:
        self._disk = disk
        self._expected: dict[tuple[str, str], Expected] = {}
        self._read: set[FileKey] = set()
        self._reading: dict[str, list[Deferred[None]]] = {}

    def __len__(self) -> int:
        return len(self._expected)

    async def expected(self, remote: str, path: str) -> Expected | None:
        """What the indexes of C{remote} read so far say C{path} is, once the readings under way ended."""
        reading = self._reading.get(remote)
        if reading:
            await DeferredList(list(reading))
        return self._expected.get((remote, path))

    def seen(self, remote: RemoteConfig, path: str, key: FileKey, download: Download | None) -> None:
        """
        C{key} holds C{path} of C{remote}, committed already (C{download}
        C{None}) or once C{download} commits it: read it if it is an index
        not read yet.
        """
        root = index_kind(remote.kind, path)
        if root is None or key in self._read:
            return
        self._read.add(key)
        reading: Deferred[None] = Deferred()
        self._reading.setdefault(remote.name, []).append(reading)

        def done(ignored: object) -> None:
            readings = self._reading.get(remote.name, [])
            if reading in readings:
                readings.remove(reading)
            if not readings:
                self._reading.pop(remote.name, None)
            reading.callback(None)

        started: Deferred[str | int | None] = Deferred()
        if download is None:
            started.callback(self._disk.store.path(Kind.FILES, key))
        else:
            # A descriptor of our own on the temp file: its bytes stay
            # readable after a commit that did not keep it unlinks it.
            try:
                fd: int | None = os.open(download.temp_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                fd = None

            def settled(result: object) -> object:
                whole = not isinstance(result, Failure) and not download.passthrough
                if fd is not None and whole and download.path is None:
                    started.callback(fd)  # verified, not kept: read it from the descriptor
                    return result
                if fd is not None:
                    os.close(fd)
                # The committed file, or None: cut or refused, nothing to read.
                started.callback(download.path if whole else None)
                return result

            download.settled.addBoth(settled)
        started.addCallback(lambda file: Deferred.fromCoroutine(self._parse(file, remote, path, root, key)))
        started.addErrback(self._failed, remote, path, key)
        started.addBoth(done)

    async def _parse(self, file: str | int | None, remote: RemoteConfig, path: str, root: str, key: FileKey) -> None:
        if file is None:
            self._read.discard(key)  # not whole: read the next version
            return
        try:
            listed = await self._disk.run(parse_index, remote.kind, file, root, path)
        finally:
            if isinstance(file, int):
                os.close(file)
        room = MAX_LISTED - len(self._expected)
        for package, expected in listed.items():
            if room <= 0:
                log.warn("More than {count} packages listed: the rest are kept unchecked", count=MAX_LISTED)
                break
            if (remote.name, package) not in self._expected:
                room -= 1
            self._expected[(remote.name, package)] = expected

    def _failed(self, failure: Failure, remote: RemoteConfig, path: str, key: FileKey) -> None:
        self._read.discard(key)
        log.warn("Could not read the index {remote}/{path}: {error}", remote=remote.name, path=path,
                 error=failure.getErrorMessage())
