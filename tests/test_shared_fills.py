"""
Unit tests of a miss shared by the fleet and the S3 store
(L{ocicache._fetch._claim.SharedFills}), on a fake clock, a fake claim
step and a fake bucket: alone the upstream is asked; with a peer its body
is fed (checked again here) once the client's access holds, and drained
when it does not; after another node completed the entry in the bucket
it is streamed from there; the claim is let go only once the bucket's
copy is done; and what a peer is served.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.web.iweb import IResponse

from ocicache._fetch._bucket_tier import BucketEntries
from ocicache._fetch._claim import ALONE, SharedFills
from ocicache._fetch._download import Download
from ocicache._fetch._fills import Fills
from ocicache._fetch._replicate import Replicator
from ocicache._fetch._sink import DiskSink
from ocicache._fetch._source import StoredFile
from ocicache._spec._reference import Digest
from ocicache._storage._bucket import Bucket
from ocicache._storage._health import DiskHealth
from ocicache._storage._store import Kind, Store
from ocitest.fakes import Reactor, SyncPool, disk_of, run
from test_bucket_tier import Body as BucketBody
from test_bucket_tier import Books, FakeBucket, _now

DATA = b"an entry's bytes" * 100
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())


class Body(BucketBody):
    """A response of an upstream or a peer: its length known."""

    @property
    def length(self) -> int:
        return len(self.data)


class Claim:
    def __init__(self, peer: Body | None = None, shared: bool = False) -> None:
        self.peer = cast(IResponse, peer) if peer is not None else None
        self.shared = shared
        self.settled: list[int | None] = []

    def done(self, committed: int | None) -> None:
        self.settled.append(committed)


class Step:
    def __init__(self, claim: Claim) -> None:
        self.given = claim
        self.asked: list[Digest] = []

    async def claim(self, digest: Digest) -> Claim:
        self.asked.append(digest)
        return self.given


class Copies:
    """A replicator whose copies the test completes."""

    def __init__(self) -> None:
        self.copies: list[tuple[Digest, Deferred[None]]] = []

    def replicate(self, download: Download, digest: Digest) -> Deferred[None]:
        copy: Deferred[None] = Deferred()
        self.copies.append((digest, copy))
        return copy


class Upstream:
    def __init__(self) -> None:
        self.bodies: list[Body] = []

    async def ask(self) -> IResponse:
        body = Body(DATA)
        self.bodies.append(body)
        return cast(IResponse, cast(Any, body))


def _same(digest: Digest) -> Digest:
    return digest


def _shared(clock: Reactor, store: Store, claim: Claim | None = None, bucket: FakeBucket | None = None,
            copies: Copies | None = None) -> tuple[SharedFills[Digest], Fills[Digest], Books]:
    fills: Fills[Digest] = Fills()
    books = Books()
    sink = DiskSink(disk_of(clock, SyncPool(), store), fills, books, DiskHealth(), Kind.BLOB)
    entries = None if bucket is None else BucketEntries(cast(Bucket, bucket), fills, sink, clock, _same)
    step = None if claim is None else Step(claim)
    return (SharedFills(sink, fills, store, Kind.BLOB, clock, _same, _same, step, entries,
                        cast(Replicator, copies)), fills, books)


def test_alone_the_upstream_is_asked_and_its_bytes_counted(clock: Reactor, store: Store) -> None:
    shared, fills, books = _shared(clock, store)
    upstream, counted = Upstream(), list[int]()
    started = _now(shared.fill(DIGEST, "here", upstream.ask, counted.append))
    assert fills.inflight[DIGEST] is started and len(upstream.bodies) == 1
    upstream.bodies[0].send()
    run(clock)
    assert started.committed and books.stored == [(DIGEST, len(DATA))] and sum(counted) == len(DATA)
    assert _now(ALONE.claim(DIGEST)) is ALONE


def test_a_peers_body_is_fed_once_access_holds_and_never_copied(clock: Reactor, store: Store) -> None:
    peer = Body(DATA)
    claim = Claim(peer=peer, shared=True)
    copies = Copies()
    shared, fills, books = _shared(clock, store, claim, FakeBucket(), copies)
    upstream, counted, checked = Upstream(), list[int](), list[bool]()

    async def authorize() -> None:
        checked.append(True)

    started = _now(shared.fill(DIGEST, "here", upstream.ask, counted.append, authorize))
    assert checked == [True] and upstream.bodies == []
    peer.send()
    run(clock)
    assert started.committed and books.stored == [(DIGEST, len(DATA))]
    assert counted == [] and copies.copies == []  # not the upstream's bytes, and the filler copies it
    assert claim.settled == [len(DATA)]


def test_a_peers_body_for_a_client_refused_is_drained_and_the_claim_let_go(clock: Reactor, store: Store) -> None:
    peer = Body(DATA)
    claim = Claim(peer=peer, shared=True)
    shared, fills, books = _shared(clock, store, claim)

    async def refuse() -> None:
        raise PermissionError("no access")

    filling = shared.fill(DIGEST, "here", Upstream().ask, authorize=refuse)
    d = Deferred.fromCoroutine(filling)
    assert peer.protocol is not None  # being drained
    peer.send()
    run(clock)
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(PermissionError)
    assert claim.settled == [None] and fills.inflight == {} and books.stored == []


def test_what_another_node_completed_in_the_bucket_is_streamed_from_there(clock: Reactor, store: Store) -> None:
    bucket = FakeBucket()
    bucket.objects[DIGEST] = DATA
    claim = Claim(shared=True)
    shared, fills, books = _shared(clock, store, claim, bucket, Copies())
    upstream = Upstream()
    started = _now(shared.fill(DIGEST, "here", upstream.ask))
    assert upstream.bodies == [] and len(bucket.opened) == 1
    assert bucket.capacity.accessed_digests == [DIGEST]
    bucket.opened[0].send()
    run(clock)
    assert started.committed and claim.settled == [len(DATA)]


def test_the_claim_is_let_go_once_the_buckets_copy_is_done(clock: Reactor, store: Store) -> None:
    claim = Claim(shared=True)
    copies = Copies()
    shared, fills, books = _shared(clock, store, claim, FakeBucket(), copies)
    upstream = Upstream()
    started = _now(shared.fill(DIGEST, "here", upstream.ask))  # not in the bucket: the upstream
    upstream.bodies[0].send()
    run(clock)
    assert started.committed and [digest for digest, _ in copies.copies] == [DIGEST]
    assert claim.settled == []  # still held: the object is not complete in the bucket yet
    copies.copies[0][1].callback(None)
    assert claim.settled == [len(DATA)]


def test_an_upstream_refusal_lets_the_claim_go(clock: Reactor, store: Store) -> None:
    claim = Claim()
    shared, fills, books = _shared(clock, store, claim)

    async def refused() -> IResponse:
        raise LookupError("404")

    with pytest.raises(LookupError):
        _now(shared.fill(DIGEST, "here", refused))
    assert claim.settled == [None]


def test_a_peer_is_served_the_fill_in_flight_or_the_stored_entry(clock: Reactor, store: Store) -> None:
    shared, fills, books = _shared(clock, store)
    assert shared.peer_source(DIGEST) is None
    upstream = Upstream()
    started = _now(shared.fill(DIGEST, "here", upstream.ask))
    source = shared.peer_source(DIGEST)
    assert source is started
    upstream.bodies[0].send()
    run(clock)
    assert source is not None
    source.release()
    stored = shared.peer_source(DIGEST)
    assert isinstance(stored, StoredFile) and stored.size == len(DATA)
    stored.release()
