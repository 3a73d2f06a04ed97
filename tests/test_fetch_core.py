"""
Unit tests of the protocol-neutral fetch core (L{ocicache._fetch}): the
tier walk, the fills, the local tiers and the disk sink, over fakes on a
fake clock, with a key kind of the tests' own whose verifier is not a
digest (bytes must end with a trailer), as git's or a package index's
will not be.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.python.failure import Failure

from ocicache._fetch._download import Download
from ocicache._fetch._errors import NotHere
from ocicache._fetch._feed import Feed
from ocicache._fetch._fills import Fills
from ocicache._fetch._incoming import DownloadError
from ocicache._fetch._observe import observed
from ocicache._fetch._passthrough import PassThrough
from ocicache._fetch._result import CacheResult
from ocicache._fetch._sink import DiskSink
from ocicache._fetch._source import StoredFile
from ocicache._fetch._tiers import InFlightTier, StoreTier
from ocicache._fetch._walk import WALKS, Filling, Found, Hit, TierWalk, Want
from ocicache._storage._health import DiskHealth
from ocicache._storage._store import Kind, Store
from ocitest.fakes import Reactor, SyncPool, disk_of, run

TRAILER = b"--END--"
WHOLE = Want()


class _TrailerCheck:
    """A body is the entry when it ends with the trailer (the tests' stand-in for a pack's)."""

    def __init__(self) -> None:
        self._tail = b""

    def update(self, data: bytes) -> None:
        self._tail = (self._tail + data)[-len(TRAILER):]

    def mismatch(self) -> str | None:
        return None if self._tail == TRAILER else "the body has no trailer"


@frozen
class Named:
    """A key named by a hash of a request, as git's responses will be."""

    algorithm: str
    encoded: str

    @classmethod
    def of(cls, request: str) -> Named:
        return cls("test", hashlib.sha256(request.encode()).hexdigest())

    def verifier(self) -> _TrailerCheck:
        return _TrailerCheck()

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded[:12]}"


class Books:
    """A L{Keeper} that records what it was told."""

    def __init__(self, room: bool = True) -> None:
        self.room = room
        self.stored: list[tuple[Named, int]] = []
        self.released: list[int] = []

    async def make_room(self, key: Named, size: int) -> bool:
        return self.room

    def kept(self, key: Named, size: int) -> None:
        self.stored.append((key, size))

    def not_kept(self, key: Named, size: int) -> None:
        self.released.append(size)


class World:
    """One kind of entry on one node: the store, the fills, the sink and the walk."""

    def __init__(self, clock: Reactor, store: Store, room: bool = True, extra: list[Any] | None = None) -> None:
        self.clock = clock
        self.store = store
        self.disk = disk_of(clock, SyncPool(), store)
        self.fills: Fills[Named] = Fills()
        self.books = Books(room)
        self.health = DiskHealth()
        self.sink = DiskSink(self.disk, self.fills, self.books, self.health, Kind.BLOB)
        self.accessed: list[Named] = []
        self.tiers: list[Any] = [StoreTier(store, Kind.BLOB, self.accessed.append), InFlightTier(self.fills)]
        self.tiers.extend(extra or [])
        self.walk = TierWalk(self.tiers, self.fills)
        self.authorized = 0
        self.misses = 0
        self.deny = False
        self.started: list[Filling] = []

    async def authorize(self) -> None:
        self.authorized += 1
        if self.deny:
            raise PermissionError("not yours")

    async def miss(self, key: Named, size: int | None = None) -> Filling:
        self.misses += 1
        started = self.sink.open(key, size, "the test upstream")
        self.started.append(started)
        return started

    def open(self, key: Named, want: Want = WHOLE) -> Deferred[Hit]:
        return ensureDeferred(self.walk.open(key, want, self.authorize, lambda: self.miss(key)))

    def size(self, key: Named) -> Deferred[int | None]:
        return ensureDeferred(self.walk.size(key, self.authorize))


def result_of(d: Deferred[Any]) -> Any:
    seen: list[Any] = []
    d.addBoth(seen.append)
    assert seen, "the Deferred has not fired"
    if isinstance(seen[0], Failure):
        seen[0].raiseException()
    return seen[0]


def read_all(source: Any) -> bytes:
    data: bytes = source.read(0, source.available)
    return data


def test_a_miss_fills_the_store_and_the_next_lookup_is_a_hit(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("clone app.git")
    hit = result_of(world.open(key))
    assert hit.result is CacheResult.MISS and world.misses == 1
    # The miss's own upstream answer is its proof: no authorize.
    assert world.authorized == 0
    body = b"x" * 5000 + TRAILER
    download = hit.source
    download.write(body)
    download.finish()
    run(clock)
    assert download.committed
    assert world.books.stored == [(key, len(body))]
    hit.source.release()
    again = result_of(world.open(key))
    assert again.result is CacheResult.HIT and world.authorized == 1
    assert read_all(again.source) == body and world.accessed == [key]
    assert result_of(world.size(key)) == len(body)
    again.source.release()


def test_a_body_its_verifier_refuses_is_never_kept(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("cut")
    hit = result_of(ensureDeferred(world.walk.open(key, Want(), world.authorize, lambda: world.miss(key, 22))))
    download = hit.source
    download.write(b"a body with no trailer")
    download.finish()
    run(clock)
    assert download.failure is not None and download.failure.check(DownloadError)
    assert "trailer" in download.failure.getErrorMessage()
    # Cut short: the held-back last byte was never released.
    assert download.available == len(b"a body with no trailer") - 1
    assert store.size(Kind.BLOB, key) is None and world.books.stored == []
    hit.source.release()
    assert world.fills.inflight == {}


def test_clients_asking_while_a_fill_runs_join_it(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("burst")
    first = result_of(world.open(key))
    others = [result_of(world.open(key)) for _ in range(5)]
    assert world.misses == 1
    assert [hit.result for hit in others] == [CacheResult.COALESCED] * 5
    assert all(hit.source is first.source for hit in others)
    assert world.authorized == 5  # once per joining lookup
    assert result_of(world.size(key)) is None  # length not known yet: the upstream is asked
    first.source.write(b"y" + TRAILER)
    first.source.finish()
    run(clock)
    for hit in [first, *others]:
        assert read_all(hit.source) == b"y" + TRAILER
        hit.source.release()


def test_concurrent_starts_share_one_miss(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("slow upstream")
    answer: Deferred[Filling] = Deferred()

    async def slow() -> Filling:
        world.misses += 1
        return await answer

    lookups = [ensureDeferred(world.walk.open(key, Want(), world.authorize, slow)) for _ in range(3)]
    assert world.misses == 1
    download = world.sink.open(key, None, "slow")
    answer.callback(download)
    hits = [result_of(d) for d in lookups]
    assert [hit.result for hit in hits] == [CacheResult.MISS, CacheResult.COALESCED, CacheResult.COALESCED]
    assert world.authorized == 2
    download.fail(Failure(DownloadError("gone")))
    for hit in hits:
        hit.source.release()


def test_a_refused_proof_releases_the_source(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("private")
    fd_count = len(os.listdir("/proc/self/fd"))
    store.write_small(Kind.BLOB, key, b"secret" + TRAILER)
    world.deny = True
    with pytest.raises(PermissionError):
        result_of(world.open(key))
    assert world.accessed == []  # no recency for a client that may not read it
    assert len(os.listdir("/proc/self/fd")) == fd_count
    # A joiner that may not read it leaves the fill to the others.
    world.deny = False
    other = Named.of("private fill")
    first = result_of(world.open(other))
    world.deny = True
    with pytest.raises(PermissionError):
        result_of(world.open(other))
    assert first.source._users == 1
    first.source.fail(Failure(DownloadError("done")))
    first.source.release()


class SlowTier:
    """A tier whose C{find} waits for the test (an S3 C{HEAD} in flight)."""

    def __init__(self) -> None:
        self.asked: list[Deferred[Found | None]] = []
        self.holds: dict[Named, bytes] = {}

    async def find(self, key: Named) -> Found | None:
        d: Deferred[Found | None] = Deferred()
        self.asked.append(d)
        return await d

    async def open(self, key: Named, want: Want, found: Found) -> Hit | None:
        return None


def test_a_fill_that_started_during_a_slow_tier_is_joined_not_fetched_again(clock: Reactor, store: Store) -> None:
    slow = SlowTier()
    world = World(clock, store, extra=[slow])
    key = Named.of("race")
    first = world.open(key)
    second = world.open(key)
    slow.asked[0].callback(None)  # the first walk misses and starts the fill
    hit = result_of(first)
    assert hit.result is CacheResult.MISS
    slow.asked[1].callback(None)  # the second walk's slow tier answers late
    joined = result_of(second)
    assert joined.result is CacheResult.COALESCED and joined.source is hit.source
    assert world.misses == 1
    hit.source.fail(Failure(DownloadError("done")))
    hit.source.release()
    joined.source.release()


def test_a_fill_that_ended_during_a_slow_tier_makes_the_walk_look_again(clock: Reactor, store: Store) -> None:
    slow = SlowTier()
    world = World(clock, store, extra=[slow])
    key = Named.of("ended meanwhile")
    first = world.open(key)
    second = world.open(key)
    slow.asked[0].callback(None)
    hit = result_of(first)
    hit.source.write(b"z" + TRAILER)
    hit.source.finish()
    run(clock)
    assert hit.source.committed
    slow.asked[1].callback(None)  # came back after the fill ended: look again
    again = result_of(second)
    assert again.result is CacheResult.HIT and world.misses == 1
    assert read_all(again.source) == b"z" + TRAILER
    hit.source.release()
    again.source.release()


def test_a_fill_whose_other_sinks_still_run_is_waited_for(clock: Reactor, store: Store) -> None:
    world = World(clock, store, room=False)  # nothing kept locally, like S3 without a local tier
    key = Named.of("replicating")
    copied: Deferred[None] = Deferred()
    download = world.sink.open(key, None, "upstream", lambda d: copied)
    assert isinstance(download, Download)
    download.write(b"q" + TRAILER)
    download.finish()
    run(clock)
    assert world.fills.inflight == {}
    watch = world.fills.watch(key)
    waiting = world.fills.changed(key, watch)
    assert waiting is not None and not waiting.called
    copied.callback(None)
    assert waiting.called
    assert world.fills.changed(key, watch) is not None  # it ended while watched
    world.fills.unwatch(key, watch)
    fresh = world.fills.watch(key)
    assert world.fills.changed(key, fresh) is None
    world.fills.unwatch(key, fresh)
    assert world.fills._watches == {}


def test_walks_are_bounded_when_fills_keep_ending(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("churn")
    calls: list[int] = []

    class Churning:
        async def find(self, k: Named) -> Found | None:
            calls.append(1)
            world.fills._ended(k)  # a fill of the key ends during every walk
            return None

        async def open(self, k: Named, want: Want, found: Found) -> Hit | None:
            return None

    world.tiers.append(Churning())
    world.walk = TierWalk(world.tiers, world.fills)
    hit = result_of(world.open(key))
    assert len(calls) == WALKS and hit.result is CacheResult.MISS
    hit.source.fail(Failure(DownloadError("done")))
    hit.source.release()


def test_a_tier_that_loses_the_entry_between_find_and_open_passes_on(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("evicted meanwhile")
    store.write_small(Kind.BLOB, key, b"gone" + TRAILER)
    tier = world.tiers[0]
    found = result_of(ensureDeferred(tier.find(key)))
    assert found == Found(len(b"gone" + TRAILER))
    store.remove(Kind.BLOB, key)
    assert result_of(ensureDeferred(tier.open(key, Want(), found))) is None
    hit = result_of(world.open(key))
    assert hit.result is CacheResult.MISS and world.authorized == 0
    hit.source.fail(Failure(DownloadError("done")))
    hit.source.release()


def test_the_sink_passes_through_when_the_disk_refuses(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    os.rmdir(store.tmp_dir)  # no temp file can be made
    key = Named.of("no disk")
    started = world.sink.open(key, 8, "upstream")
    assert isinstance(started, PassThrough) and world.health.failing
    assert world.fills.inflight == {}
    started.fail(Failure(DownloadError("cut")))
    assert started.ended and started.failure is not None


def test_a_failed_commit_gives_its_room_back(clock: Reactor, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(clock, store)
    key = Named.of("rename fails")

    def broken_commit(*args: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "commit", broken_commit)
    download = world.sink.open(key, None, "upstream")
    assert isinstance(download, Download)
    download.write(b"r" + TRAILER)
    download.finish()
    run(clock)
    assert not download.committed and download.failure is None
    assert world.books.released == [len(b"r" + TRAILER)] and world.books.stored == []


def test_not_kept_when_the_keeper_has_no_room(clock: Reactor, store: Store) -> None:
    world = World(clock, store, room=False)
    key = Named.of("no room")
    download = world.sink.open(key, None, "upstream")
    assert isinstance(download, Download)
    download.write(b"s" + TRAILER)
    download.finish()
    run(clock)
    assert not download.committed and download.available == len(b"s" + TRAILER)
    assert world.books.stored == [] and world.books.released == []
    assert store.size(Kind.BLOB, key) is None


def test_the_feed_writes_counts_and_ends(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("fed")
    download = world.sink.download(key, None)
    counted: list[int] = []
    feed = Feed(download, clock, counted.append)
    feed.received(b"abc")
    feed.received(TRAILER)
    feed.ended()
    run(clock)
    assert counted == [3, len(TRAILER)] and download.committed
    other = world.sink.download(Named.of("fed badly"), None)
    failures: list[Failure] = []
    other.settled.addErrback(failures.append)
    Feed(other, clock).failed(Failure(DownloadError("reset")))
    assert failures


def test_observed_fires_on_success_and_failure_and_leaves_the_result() -> None:
    ok: Deferred[int] = succeed(1)
    seen = observed(ok)
    assert seen.called and result_of(ok) == 1
    bad: Deferred[int] = fail(ValueError("x"))
    seen_bad = observed(bad)
    assert seen_bad.called
    with pytest.raises(ValueError):
        result_of(bad)


def test_stored_files_verify_with_the_keys_own_verifier(clock: Reactor, store: Store) -> None:
    key = Named.of("at rest")
    store.write_small(Kind.BLOB, key, b"no trailer here")
    opened = store.open(Kind.BLOB, key)
    assert opened is not None
    corrupt: list[Named] = []
    source = StoredFile(*opened).verified(key, corrupt.append, disk_of(clock, SyncPool(), store).run, lambda: 1 << 20)
    run(clock)
    assert source.failure is not None and corrupt == [key]
    assert source.available < len(b"no trailer here") and source.read(0, 100) == b""
    source.release()


def test_a_lookup_that_joined_a_tiers_fill_that_failed_starts_its_own(clock: Reactor, store: Store) -> None:
    """
    The S3 store went away between one lookup's C{HEAD} and its C{GET},
    while another lookup (whose C{HEAD} already failed) joined that fill:
    the joiner fetches it itself rather than failing (the chaos run's 500).
    """
    world = World(clock, store)
    key = Named.of("bucket went away")
    opening: Deferred[Filling] = Deferred()
    tier_fill, joined = world.fills.start(key, lambda: opening)
    assert not joined
    lookup = world.open(key)  # no tier holds it: its miss joins the tier's fill
    assert world.misses == 0
    opening.errback(NotHere())
    tier_fill.addErrback(lambda failure: failure.trap(NotHere))
    hit = result_of(lookup)
    assert hit.result is CacheResult.MISS and world.misses == 1
    hit.source.fail(Failure(DownloadError("done")))
    hit.source.release()


def test_a_lookups_own_miss_failing_is_its_failure(clock: Reactor, store: Store) -> None:
    world = World(clock, store)
    key = Named.of("upstream says no")

    async def refused() -> Filling:
        raise NotHere()

    with pytest.raises(NotHere):
        result_of(ensureDeferred(world.walk.open(key, Want(), world.authorize, refused)))


def test_a_download_that_cannot_open_its_reader_leaves_no_temp_file(
        clock: Reactor, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The temp file is made, then opened again for reading: when that second
    open fails (EMFILE), the first is not leaked (issue 18's review).
    """
    real_open = os.open

    def no_reader(path: str, flags: int, *args: Any) -> int:
        if flags & os.O_ACCMODE == os.O_RDONLY and path.startswith(store.tmp_dir):
            raise OSError(24, "Too many open files")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_reader)
    with pytest.raises(OSError):
        Download(disk_of(clock, SyncPool(), store), Named.of("emfile"), None)
    assert os.listdir(store.tmp_dir) == []
