"""
Unit tests of one fill per key across the processes on a store
(L{ocicache._fetch._host_fills}, L{ocicache._fetch._elsewhere},
L{ocicache._fetch._fill_notes}) on a fake clock.  Two walks on one store
in this process stand for two processes: their key locks are C{flock}s of
separate open files, which exclude each other as processes do.  A filler
that dies is a real second process, killed with C{SIGKILL}.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from ocicache._fetch import _fill_notes as notes
from ocicache._fetch._download import Download
from ocicache._fetch._elsewhere import FOLLOW_POLL, ElsewhereTier
from ocicache._fetch._errors import FilledElsewhere
from ocicache._fetch._fill_notes import FillNotes
from ocicache._fetch._fills import Fills
from ocicache._fetch._host_fills import HostFills
from ocicache._fetch._result import CacheResult
from ocicache._fetch._sink import DiskSink
from ocicache._fetch._tiers import InFlightTier, StoreTier
from ocicache._fetch._walk import Filling, Hit, Tier, TierWalk, Want
from ocicache._storage._health import DiskHealth
from ocicache._storage._reading import mark_reading
from ocicache._storage._store import Kind, Store
from ocitest.daemon import daemon_root
from ocitest.fakes import Reactor, SyncPool, disk_of, run
from test_fetch_core import TRAILER, Books, Named, read_all, result_of

BODY = b"b" * 300_000 + TRAILER
WHOLE = Want()


class Process:
    """One process's walk of one kind of entry, on the shared store."""

    def __init__(self, clock: Reactor, store: Store) -> None:
        self.disk = disk_of(clock, SyncPool(), store)
        self.fills: Fills[Named] = Fills()
        self.books = Books()
        self.sink = DiskSink(self.disk, self.fills, self.books, DiskHealth(), Kind.BLOB)
        self.host: HostFills[Named] = HostFills(self.disk, Kind.BLOB)
        tiers: list[Tier[Named]] = [StoreTier(store, Kind.BLOB), InFlightTier(self.fills), ElsewhereTier(self.host)]
        self.walk: TierWalk[Named] = TierWalk(tiers, self.fills, self.host)
        self.misses = 0
        self.gate: Deferred[None] | None = None
        self.started: list[Filling] = []

    async def miss(self, key: Named, size: int | None) -> Filling:
        self.misses += 1
        if self.gate is not None:
            await self.gate  # the upstream has not answered yet
        started = self.sink.open(key, size, "the test upstream")
        self.started.append(started)
        return started

    def open(self, key: Named, size: int | None = len(BODY), want: Want = WHOLE) -> Deferred[Hit]:
        return ensureDeferred(self.walk.open(key, want, _anyone, lambda: self.miss(key, size)))


async def _anyone() -> None:
    return None


class Reader:
    position = 0

    def __init__(self) -> None:
        self.told = 0

    def data_arrived(self) -> None:
        self.told += 1


def _download(hit: Hit) -> Download:
    assert isinstance(hit.source, Download)
    return hit.source


def _hit(clock: Reactor, opening: Deferred[Hit]) -> Hit:
    run(clock)  # the disk pool's answers come back through the reactor
    hit: Hit = result_of(opening)
    return hit


def _poll(clock: Reactor) -> None:
    clock.advance(FOLLOW_POLL)
    run(clock)


def _tmp(store: Store) -> list[str]:
    """What is left under tmp/ (lock files included)."""
    found = []
    for _, _, files in os.walk(store.tmp_dir):
        found += files
    return found


def test_another_process_s_fill_is_followed_with_the_last_byte_held_back(clock: Reactor, store: Store) -> None:
    a, b = Process(clock, store), Process(clock, store)
    key = Named.of("shared")
    filling = _hit(clock, a.open(key))
    assert filling.result is CacheResult.MISS
    download = _download(filling)
    download.write(BODY[:1000])
    run(clock)
    followed = b.open(key)
    run(clock)
    hit = result_of(followed)
    assert hit.result is CacheResult.COALESCED and b.misses == 0
    source = hit.source
    reader = Reader()
    source.subscribe(reader)
    assert source.size == len(BODY) and source.available == 1000
    assert source.read(0, 5000) == BODY[:1000]
    fd, ready = source.file_span(0)
    assert ready == 1000 and os.pread(fd, ready, 0) == BODY[:1000]
    download.write(BODY[1000:])
    run(clock)
    _poll(clock)
    # Every byte is in the file, but not verified: the last stays back.
    assert source.available == len(BODY) - 1 and not source.ended and reader.told
    download.finish()
    run(clock)
    _poll(clock)
    assert source.available == len(BODY) and source.ended and source.failure is None
    assert read_all(source) == BODY
    assert b.open(key) is not None and _hit(clock, b.open(key)).result is CacheResult.HIT
    assert a.misses == 1 and b.misses == 0
    source.unsubscribe(reader)
    source.release()
    filling.source.release()
    assert _tmp(store) == []  # the lock let go and removed, the temp file committed


def test_a_failed_fill_fails_its_followers_and_nobody_fetches_again(clock: Reactor, store: Store) -> None:
    a, b = Process(clock, store), Process(clock, store)
    key = Named.of("bad")
    filling = _hit(clock, a.open(key, size=None))
    download = _download(filling)
    download.write(b"a body without its trailer")
    run(clock)
    hit = _hit(clock, b.open(key))
    run(clock)
    source = hit.source
    _poll(clock)
    assert source.read(0, 100) == b"a body without its trailer"
    download.finish()
    run(clock)
    _poll(clock)
    assert source.ended and source.failure is not None and "trailer" in source.failure.getErrorMessage()
    assert b.misses == 0
    source.release()
    filling.source.release()
    assert _tmp(store) == []


def test_a_fill_that_fails_before_its_body_leaves_each_process_to_ask(clock: Reactor, store: Store) -> None:
    a, b = Process(clock, store), Process(clock, store)
    key = Named.of("refused")
    a.gate = Deferred()
    first = a.open(key)
    run(clock)
    second = b.open(key)
    _poll(clock)
    assert not second.called  # waits for the other process's upstream
    a.gate.errback(PermissionError("the upstream said 401 to that request"))
    run(clock)
    refused: list[Failure] = []
    first.addErrback(refused.append)
    assert refused and refused[0].check(PermissionError)
    _poll(clock)
    # That failure was the other request's: this process asks for itself.
    hit = result_of(second)
    assert hit.result is CacheResult.MISS and b.misses == 1
    _download(hit).write(BODY)
    _download(hit).finish()
    run(clock)
    assert read_all(hit.source) == BODY
    hit.source.release()


DEAD = """
import os, sys, time
from ocicache._fetch import _fill_notes as notes
from ocicache._storage._key_locks import KeyLocks
from ocicache._storage._store import Kind, Store
from test_fetch_core import Named
root, request, size, part = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
key = Named.of(request)
lock = KeyLocks(root).take(Kind.BLOB, key)
lock.note(notes.holder(os.urandom(8).hex()))
temp = Store(root).new_temp(key.encoded[:16])
os.write(temp.fd, part)
lock.note(notes.temp(temp.path, size))
print(temp.path, flush=True)
time.sleep(600)
"""


@pytest.fixture
def dead_filler(store: Store) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _filler(store: Store, started: list[subprocess.Popen[str]], request: str, part: bytes
            ) -> tuple[subprocess.Popen[str], str]:
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([daemon_root(), tests, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", DEAD, store.root, request, str(len(BODY)), part.decode()],
                               env=env, stdout=subprocess.PIPE, text=True)
    started.append(process)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@pytest.mark.integration  # a real second process
@pytest.mark.parametrize("same", [True, False])
def test_a_filler_killed_mid_body_is_taken_over_by_one_follower(
        clock: Reactor, store: Store, dead_filler: list[subprocess.Popen[str]], same: bool) -> None:
    b = Process(clock, store)
    key = Named.of("killed")
    sent = BODY[:70_000] if same else b"c" * 70_000
    filler, temp = _filler(store, dead_filler, "killed", sent)
    hit = _hit(clock, b.open(key))
    run(clock)
    source = hit.source
    _poll(clock)
    assert source.read(0, 100_000) == sent and b.misses == 0
    filler.send_signal(signal.SIGKILL)
    filler.wait()
    _poll(clock)
    # This process took the lock: the dead fill's temp file is gone.
    assert b.misses == 1 and not os.path.exists(temp)
    download = b.started[0]
    assert isinstance(download, Download)
    download.write(BODY)
    download.finish()
    run(clock)
    if same:
        assert source.ended and source.failure is None and source.available == len(BODY)
        assert source.read(70_000, len(BODY)) == BODY[70_000:]
    else:
        # The client was sent bytes the verified fill does not have: cut short.
        assert source.failure is not None and "other bytes" in source.failure.getErrorMessage()
        assert source.available < len(BODY)
    source.release()
    assert _tmp(store) == []


def test_notes_are_read_only_when_well_formed() -> None:
    token = "0123456789abcdef"
    name = "0123456789abcdef.fedcba9876543210.part"
    whole = notes.holder(token) + notes.temp(f"/store/tmp/{name}", 10) + notes.verified(10)
    parsed = FillNotes.parse(whole)
    assert parsed is not None and (parsed.temp, parsed.size, parsed.verified) == (name, 10, 10)
    assert FillNotes.parse(whole[:-1]) == FillNotes.parse(notes.holder(token) + notes.temp(name, 10))
    refused = [
        b"",
        b'{"holder": "0123456789abcdef", "pid": 1',
        notes.temp(name, 10),  # no holder first
        b'{"holder": "../../etc/passwd00", "pid": 1}\n',
        notes.holder(token) + b'{"temp": "../blobs/x.0123456789abcdef.part", "size": 1}\n',
        notes.holder(token) + b'{"temp": "' + name.encode() + b'", "size": -1}\n',
        notes.holder(token) + b'{"temp": "' + name.encode() + b'", "size": true}\n',
        notes.holder(token) + notes.verified(10),  # verified with no body
        notes.holder(token) + notes.temp(name, 10) + notes.verified(9),
        notes.holder(token) + notes.failed("x") + notes.temp(name, 10),  # nothing follows an end
        notes.holder(token) + b'{"temp": "' + name.encode() + b'", "size": 1, "more": 2}\n',
    ]
    assert [FillNotes.parse(data) for data in refused] == [None] * len(refused)
    assert FillNotes.parse(notes.holder(token) + notes.failed("x" * 5000)) is not None


def test_a_download_read_by_another_process_is_not_abandoned(clock: Reactor, store: Store) -> None:
    a = Process(clock, store)
    download = _download(_hit(clock, a.open(Named.of("read elsewhere"))))
    download.release()
    reading = os.open(download.temp_path, os.O_RDONLY)
    try:
        mark_reading(reading)
        clock.advance(11)
        run(clock)
        assert not download.ended
    finally:
        os.close(reading)
    clock.advance(11)
    run(clock)
    assert download.ended and download.failure is not None


def test_start_up_leaves_the_temp_files_another_process_writes(store: Store) -> None:
    live = store.new_temp("live")
    dead = store.new_temp("dead")
    dead.close()
    assert store.remove_temp_files() == 1
    assert os.path.exists(live.path) and not os.path.exists(dead.path)
    live.discard()


def test_a_miss_that_finds_the_entry_committed_once_it_holds_the_lock_looks_again(
        clock: Reactor, store: Store) -> None:
    a, b = Process(clock, store), Process(clock, store)
    key = Named.of("committed meanwhile")
    filling = _hit(clock, a.open(key))
    _download(filling).write(BODY)
    _download(filling).finish()
    run(clock)
    filling.source.release()
    # b walked its tiers before the commit; its miss comes after it.
    locked = ensureDeferred(b.host.locked(key, lambda: b.miss(key, len(BODY))))
    run(clock)
    refused: list[Failure] = []
    locked.addErrback(refused.append)
    assert refused and refused[0].check(FilledElsewhere) and b.misses == 0
    assert _tmp(store) == []
