"""
The pull log: who pulled which manifest, by which reference, and when,
kept for C{days} days.

One JSON line per manifest GET, in a file per UTC day under
C{<cache>/pulls/} (C{2026-12-07.jsonl}): appending costs no database
write on the hot path, and a day past the retention is one unlink.
Lines are buffered and appended on the disk pool every few seconds (and
at once when the buffer is full), never on the reactor.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Pull", "PullLog"]

log = Logger()

FLUSH_EVERY = 5.0
BUFFERED = 1000
"""Lines held before an early flush."""
READ_LIMIT = 100000
"""The most lines one query returns."""


@frozen
class Pull:
    at: float
    who: str
    """The authenticated identity, or the client's address."""
    upstream: str
    repo: str
    reference: str
    digest: str

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "who": self.who, "repository": f"{self.upstream}/{self.repo}",
                "reference": self.reference, "digest": self.digest}


def _day(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d")


class PullLog:
    def __init__(self, directory: str, days: int, reactor: IReactorTime,
                 run: Callable[..., Deferred[Any]]) -> None:
        self._directory = directory
        self._days = days
        self._reactor = reactor
        self._run = run
        self._buffer: list[Pull] = []
        self._flushing: Deferred[Any] | None = None
        self._loop = LoopingCall(self.flush)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(FLUSH_EVERY, now=False)

    def stop(self) -> Deferred[None]:
        if self._loop.running:
            self._loop.stop()
        return self.flush()

    def record(self, pull: Pull) -> None:
        self._buffer.append(pull)
        if len(self._buffer) >= BUFFERED and self._flushing is None:
            self.flush()

    def flush(self) -> Deferred[None]:
        """Append the buffered lines, and drop the days past the retention."""
        if self._flushing is not None:
            return self._flushing
        lines, self._buffer = self._buffer, []
        cutoff = _day(self._reactor.seconds() - self._days * 86400)
        flushing: Deferred[None] = self._run(_append, self._directory, lines, cutoff)

        def failed(failure: Failure) -> None:
            log.warn("Pull log: cannot write {directory}: {error}", directory=self._directory,
                     error=failure.getErrorMessage())

        def done(result: None) -> None:
            self._flushing = None

        self._flushing = flushing
        flushing.addErrback(failed).addBoth(done)
        return flushing

    async def recent(self, since: float) -> list[dict[str, Any]]:
        """Every pull since C{since}, oldest first, the buffered ones included."""
        written: list[dict[str, Any]] = await self._run(_read, self._directory, since)
        pending = [pull.as_json() for pull in self._buffer if pull.at >= since]
        return (written + pending)[-READ_LIMIT:]


def _append(directory: str, pulls: list[Pull], cutoff: str) -> None:
    os.makedirs(directory, exist_ok=True)
    by_day: dict[str, list[str]] = {}
    for pull in pulls:
        by_day.setdefault(_day(pull.at), []).append(json.dumps(pull.as_json()) + "\n")
    for day, lines in by_day.items():
        with open(os.path.join(directory, day + ".jsonl"), "a", encoding="utf-8") as f:
            f.writelines(lines)
    for name in os.listdir(directory):
        if name.endswith(".jsonl") and name[:-6] < cutoff:
            os.unlink(os.path.join(directory, name))


def _read(directory: str, since: float) -> list[dict[str, Any]]:
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(".jsonl"))
    except FileNotFoundError:
        return []
    first = _day(since)
    found: list[dict[str, Any]] = []
    for name in names:
        if name[:-6] < first:
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if isinstance(entry, dict) and entry.get("at", 0) >= since:
                    found.append(entry)
        if len(found) > READ_LIMIT:
            found = found[-READ_LIMIT:]
    return found
