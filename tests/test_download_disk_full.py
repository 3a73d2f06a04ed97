"""
A download whose disk fails mid-way (ENOSPC injected at the writer):
the readers already attached get every byte from the memory window,
nothing is committed, and the window stays bounded by the slowest reader.

The end-to-end version, on a real full tmpfs, is in
test_integration_store.py; this one runs everywhere.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from ocicache._fetch._download import Download
from ocicache._fetch._passthrough import HIGH_WATER
from ocicache._spec._reference import Digest
from ocicache._storage._store import Kind, Store
from ocitest.fakes import SyncPool, disk_of


class _Now(Clock):
    """A reactor that runs 'thread' results at once: deterministic."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class _Reader:
    def __init__(self, download: Download, eager: bool = True, turn: int = 1 << 20) -> None:
        self.download = download
        self.eager = eager
        self.turn = turn
        self.received = bytearray()
        download.acquire()
        download.subscribe(self)

    @property
    def position(self) -> int:
        return len(self.received)

    def data_arrived(self) -> None:
        if self.eager:
            self.drain()

    def drain(self) -> None:
        while self.position < self.download.available:
            data = self.download.read(self.position, self.turn)
            assert data, "a reader attached from the start must never find its bytes gone"
            self.received += data


@implementer(IPushProducer)
class _Producer:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


@pytest.fixture
def full_after(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], list[int]]:
    """
    Make the writer fail with ENOSPC once C{limit} bytes are on disk.
    """

    def install(limit: int) -> list[int]:
        written = [0]
        real_write = os.write

        def write(fd: int, data: Any) -> int:
            if written[0] + len(data) > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            count = real_write(fd, data)
            written[0] += count
            return count

        monkeypatch.setattr("ocicache._fetch._download.os.write", write)
        return written

    return install


def _body(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def test_readers_get_every_byte_and_nothing_is_committed(
    tmp_path: Any, full_after: Callable[[int], list[int]],
) -> None:
    store = Store(str(tmp_path))
    store.prepare()
    body = _body(12 << 20)
    digest = Digest("sha256", hashlib.sha256(body).hexdigest())
    errors: list[OSError] = []
    download = Download(disk_of(_Now(), SyncPool(), store), digest, len(body),
                        on_disk_error=errors.append)
    readers = [_Reader(download) for _ in range(3)]
    full_after(5 << 20)
    settled: list[object] = []
    download.settled.addBoth(settled.append)
    for offset in range(0, len(body), 64 << 10):
        download.write(body[offset:offset + (64 << 10)])
    download.finish()

    assert download.passthrough
    assert [len(e.args) and e.errno for e in errors] == [errno.ENOSPC]
    for reader in readers:
        reader.drain()
        assert bytes(reader.received) == body
    assert settled == [None], "verified, but not kept"
    assert store.size(Kind.BLOB, digest) is None
    assert os.listdir(store.tmp_dir) == []


def _paused_by(tmp_path: Any, body: bytes) -> tuple[Download, _Producer]:
    """A download of C{body} into a fresh store, and the upstream it pauses and resumes."""
    store = Store(str(tmp_path))
    store.prepare()
    digest = Digest("sha256", hashlib.sha256(body).hexdigest())
    download = Download(disk_of(_Now(), SyncPool(), store), digest, len(body))
    producer = _Producer()
    download.attach(producer)
    return download, producer


def test_the_window_is_bounded_by_the_slowest_reader(
    tmp_path: Any, full_after: Callable[[int], list[int]],
) -> None:
    body = _body(3 * HIGH_WATER)
    download, producer = _paused_by(tmp_path, body)
    fast = _Reader(download)
    slow = _Reader(download, eager=False)
    full_after(0)
    offset = 0
    # Feed until the upstream is paused: the slow reader has read nothing.
    while not producer.paused and offset < len(body):
        download.write(body[offset:offset + (256 << 10)])
        offset += 256 << 10
    assert producer.paused and offset < len(body)
    assert download._spill is not None and len(download._spill._window) <= HIGH_WATER + (256 << 10)
    # The slow reader catches up: the window is trimmed, the upstream resumes.
    slow.drain()
    assert not producer.paused
    while offset < len(body):
        download.write(body[offset:offset + (256 << 10)])
        offset += 256 << 10
        slow.drain()
    download.finish()
    slow.drain()
    assert bytes(fast.received) == body and bytes(slow.received) == body


def test_readers_caught_up_in_large_turns_resume_the_upstream(
    tmp_path: Any, full_after: Callable[[int], list[int]],
) -> None:
    """
    Readers that read 4 MiB at a time (the sendfile streamer's buffered
    turn) and have taken everything must let the upstream go on: the
    window is trimmed past what the reader reading now takes, not only
    past where it stood.  (The trim once ignored the caller's own read,
    kept up to a turn in the window, above LOW_WATER, and the download
    stalled with every client waiting.)
    """
    body = _body(3 * HIGH_WATER)
    download, producer = _paused_by(tmp_path, body)
    readers = [_Reader(download, eager=False, turn=4 << 20) for _ in range(3)]
    full_after(0)
    offset = 0
    while offset < len(body):
        while not producer.paused and offset < len(body):
            download.write(body[offset:offset + (256 << 10)])
            offset += 256 << 10
        for reader in readers:
            reader.drain()
        assert not producer.paused or offset >= len(body), f"stalled at {offset} with every reader caught up"
    download.finish()
    for reader in readers:
        reader.drain()
        assert bytes(reader.received) == body


def test_a_bad_digest_in_passthrough_cuts_the_readers(
    tmp_path: Any, full_after: Callable[[int], list[int]],
) -> None:
    store = Store(str(tmp_path))
    store.prepare()
    body = _body(4 << 20)
    wrong = Digest("sha256", hashlib.sha256(b"something else").hexdigest())
    download = Download(disk_of(_Now(), SyncPool(), store), wrong, len(body))
    reader = _Reader(download)
    full_after(1 << 20)
    failures: list[Failure] = []
    download.settled.addErrback(failures.append)
    download.write(body)
    download.finish()
    assert download.failure is not None and failures
    # The final byte was held back: the reader never saw a complete body.
    assert len(reader.received) < len(body)
