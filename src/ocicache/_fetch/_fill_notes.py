"""
What a process filling an entry tells the other processes on its store,
in the entry's lock file (L{ocicache._storage._key_locks.KeyLock.note}):
one JSON object a line, in this order.

    {"holder": "<16 hex>", "pid": <pid>}      the lock was taken (first line)
    {"temp": "<name>.part", "size": <n>|null}   the upstream answered: the body goes into tmp/<name>.part
    {"verified": <n>}                          every byte passed the key's verifier
    {"failed": "<why>"}                        the fill failed: nothing is kept

Whoever reads them trusts nothing it did not check: every line is
validated against this grammar (a torn or unknown line makes the whole
unreadable, as if not yet written), and a temp file's name is a plain
file name, never a path.
"""

from __future__ import annotations

import json
import os
import re

from attrs import evolve, frozen

__all__ = ["FillNotes", "failed", "holder", "temp", "verified"]

_HOLDER = re.compile(r"[0-9a-f]{16}")
_TEMP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.[0-9a-f]{16}\.part")
_LARGEST = 1 << 62
_MESSAGE = 1024


@frozen
class FillNotes:
    """
    One holder's notes, as far as they are written.

    @ivar holder: the holder's token, new at every take of the lock.
    @ivar temp: the name of the temp file under C{tmp/} the body goes into.
    @ivar size: the body's length, when the upstream said it.
    @ivar verified: the body's length once every byte of it was verified.
    @ivar failed: why the fill failed.
    """

    holder: str
    pid: int
    temp: str | None = None
    size: int | None = None
    verified: int | None = None
    failed: str | None = None

    @classmethod
    def parse(cls, data: bytes) -> FillNotes | None:
        """The notes in C{data}, or C{None} when they are not (yet) well-formed."""
        lines = data.split(b"\n")[:-1]  # what follows the last newline is still being written
        if not lines or len(lines) > 3:
            return None
        try:
            fields = [json.loads(line) for line in lines]
        except ValueError:
            return None
        if not all(isinstance(field, dict) for field in fields):
            return None
        first = fields[0]
        token, pid = first.get("holder"), first.get("pid")
        if (set(first) != {"holder", "pid"} or not isinstance(token, str) or not _HOLDER.fullmatch(token)
                or not _count(pid) or pid == 0):
            return None
        notes = cls(token, pid)
        for field in fields[1:]:
            following = notes._then(field)
            if following is None:
                return None
            notes = following
        return notes

    def _then(self, field: dict[str, object]) -> FillNotes | None:
        """These notes and one more line, or C{None} when it does not follow them."""
        if self.verified is not None or self.failed is not None:
            return None
        match field:
            case {"temp": str(name), "size": (int() | None) as size} if (
                    len(field) == 2 and self.temp is None and _TEMP.fullmatch(name)
                    and (size is None or _count(size))):
                return evolve(self, temp=name, size=size)
            case {"verified": int(length)} if (
                    len(field) == 1 and self.temp is not None and _count(length)
                    and self.size in (None, length)):
                return evolve(self, verified=length)
            case {"failed": str(message)} if len(field) == 1 and len(message) <= _MESSAGE:
                return evolve(self, failed=message)
        return None


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value < _LARGEST


def _line(field: dict[str, object]) -> bytes:
    return json.dumps(field, separators=(",", ":")).encode() + b"\n"


def holder(token: str) -> bytes:
    return _line({"holder": token, "pid": os.getpid()})


def temp(path: str, size: int | None) -> bytes:
    return _line({"temp": os.path.basename(path), "size": size})


def verified(length: int) -> bytes:
    return _line({"verified": length})


def failed(message: str) -> bytes:
    # Cut to what a reader accepts, at a character, not a byte.
    return _line({"failed": message[:_MESSAGE]})
