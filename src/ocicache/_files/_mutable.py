"""
The records of mutable files: which stored version of C{(remote, path)} is
current, its validators, and when the remote last confirmed it.

A mutable file's versions are stored under keys of their own
(L{generation_key}: a random generation per version fetched), so a new
version is committed beside the old one, then the record is pointed at it,
then the old one is deleted: a client reading the old version keeps
reading it (its descriptor), a client arriving later gets the new one, and
nobody ever sees a mix.  The record itself is a small JSON file in the
store (under L{record_key}), written atomically, so a restart keeps every
mutable file and its validators: the first request after it revalidates
with a conditional GET instead of fetching the file again.
"""

from __future__ import annotations

import json
import math
from typing import Protocol

from attrs import asdict, frozen
from twisted.logger import Logger

from .._storage._disk import Disk
from .._storage._store import Kind, Store
from ._key import FileKey, record_key

__all__ = ["Record", "Records", "SharedRecords"]

log = Logger()

MAX_RECORD = 4096
"""Bytes of a record file read at most; a bigger one is not ours."""

MAX_VALIDATOR = 256


@frozen
class Record:
    """The current version of one mutable file."""

    encoded: str
    """The hex of its L{FileKey}."""
    size: int
    checked: float
    """When the remote last sent or confirmed it (seconds since the epoch)."""
    etag: str | None = None
    last_modified: str | None = None

    def key(self, path: str) -> FileKey:
        return FileKey("sha256", self.encoded, path)

    def encode(self) -> bytes:
        """The record as it is written (in the store, or for the fleet)."""
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Record | None:
        """A record as L{encode} wrote it, or C{None} if C{data} is not one (never trusted as it is)."""
        try:
            fields = json.loads(data) if len(data) <= MAX_RECORD else None
            if not isinstance(fields, dict):
                return None
            record = cls(**fields)
            FileKey.parse(f"sha256:{record.encoded}")
        except (ValueError, TypeError):
            return None
        if (not isinstance(record.size, int) or isinstance(record.size, bool) or record.size < 0
                or not isinstance(record.checked, (int, float)) or not math.isfinite(record.checked)):
            return None
        for validator in (record.etag, record.last_modified):
            if validator is not None and (not isinstance(validator, str) or len(validator) > MAX_VALIDATOR
                                          or not validator.isascii() or not validator.isprintable()):
                return None
        return record


class SharedRecords(Protocol):
    """
    The records shared by a fleet of nodes (L{ocicache._fleet}), so that
    a mutable file one node revalidated is fresh for all of them within
    its TTL.  Best effort: a lookup answers C{None} at once when the
    shared store cannot be asked, and a write may be dropped.
    """

    async def get(self, remote: str, path: str) -> Record | None: ...

    def put(self, remote: str, path: str, record: Record, ttl: float) -> None:
        """Share C{record} for C{ttl} seconds (sent now: it lands before a later command of this node)."""


class Records:
    """The records, in memory and in the store."""

    def __init__(self, disk: Disk) -> None:
        self._disk = disk
        self._memory: dict[tuple[str, str], Record] = {}

    async def get(self, remote: str, path: str) -> Record | None:
        record = self._memory.get((remote, path))
        if record is None:
            record = await self._disk.run(_read, self._disk.store, record_key(remote, path))
            if record is not None:
                self._memory.setdefault((remote, path), record)
        return self._memory.get((remote, path))

    async def put(self, remote: str, path: str, record: Record) -> None:
        """The new current version; written through to the store (a failure is logged: memory still has it)."""
        self._memory[(remote, path)] = record
        try:
            await self._disk.run(self._disk.store.write_small, Kind.FILES, record_key(remote, path), record.encode())
        except OSError as e:
            log.warn("Could not write the record of {remote}/{path}: {error}", remote=remote, path=path, error=e)


def _read(store: Store, key: FileKey) -> Record | None:
    path = store.path(Kind.FILES, key)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD + 1)
    except FileNotFoundError:
        return None
    return Record.decode(data)
