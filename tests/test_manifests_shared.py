"""
L{ocicache._oci._manifests.ManifestService} with a fleet's shared view
(L{ocicache._oci._manifests.SharedManifests}): three nodes, each with its
own store and metadata database, one fake shared store and one fake
upstream.  What one node learnt from the upstream spares the other its
C{GET} and C{HEAD}; shared bytes that are not what their digest names, or
an entry older than C{tag_ttl}, are not used; Accept variants stay apart;
a failing upstream still serves stale.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from twisted.web.http_headers import Headers

from ocicache._fetch._result import CacheResult
from ocicache._oci import _manifest_fleet
from ocicache._oci._access import RepoAccess
from ocicache._oci._errors import ManifestUnknown
from ocicache._oci._manifests import ManifestLookup, ManifestService, SharedTag
from ocicache._ops._config import StalePolicy
from ocicache._spec._media_types import MANIFEST_MEDIA_TYPES
from ocicache._spec._reference import Digest
from ocicache._storage._disk import Disk
from ocicache._storage._metadata import Metadata
from ocicache._storage._store import Store
from ocicache._upstream._client import Upstream

OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
TTL = 60.0
REPO = "library/app"


def _body(seed: str) -> bytes:
    return b'{"schemaVersion": 2, "mediaType": "%s", "layers": [], "seed": "%s"}' % (OCI.encode(), seed.encode())


def _digest(body: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(body).hexdigest())


class _Response:
    def __init__(self, code: int, body: bytes = b"", headers: dict[bytes, bytes] | None = None) -> None:
        self.code = code
        self.body = body
        self.headers = Headers({name: [value] for name, value in (headers or {}).items()})


class _Upstream:
    """One repository's manifests by tag and digest; every request it was asked."""

    name = "docker.io"
    config = SimpleNamespace(stale=StalePolicy())

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}
        self.asked: list[tuple[str, str]] = []
        self.down = False

    def tag(self, tag: str, body: bytes) -> None:
        self.content[tag] = body
        self.content[str(_digest(body))] = body

    async def manifest(self, method: str, repo: str, reference: str, accept: Sequence[str]) -> _Response:
        self.asked.append((method, reference))
        if self.down:
            return _Response(503)
        body = self.content.get(reference)
        if body is None:
            return _Response(404)
        headers = {b"content-type": OCI.encode(), b"docker-content-digest": str(_digest(body)).encode()}
        return _Response(200, body if method == "GET" else b"", headers)

    async def read_body(self, response: _Response, limit: int) -> bytes | None:
        return response.body if len(response.body) <= limit else None

    async def discard(self, response: _Response) -> None:
        pass


class _Shared:
    """The fleet's Redis, as a dict: every write lands at once."""

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str, str], SharedTag] = {}
        self.manifests: dict[Digest, tuple[str, bytes]] = {}
        self.ttls: list[float] = []
        self.busy: set[str] = set()
        """Keys another node has the turn of."""
        self.turns: list[str] = []
        self.ended: list[str] = []

    async def tag(self, upstream: str, repo: str, key: str) -> SharedTag | None:
        return self.tags.get((upstream, repo, key))

    def put_tag(self, upstream: str, repo: str, key: str, tag: SharedTag, ttl: float) -> None:
        self.tags[(upstream, repo, key)] = tag
        self.ttls.append(ttl)

    async def manifest(self, digest: Digest) -> tuple[str, bytes] | None:
        return self.manifests.get(digest)

    def put_manifest(self, digest: Digest, media_type: str, body: bytes) -> None:
        self.manifests[digest] = (media_type, body)

    async def turn(self, upstream: str, repo: str, key: str) -> Callable[[], None] | None:
        if key in self.busy:
            return None
        self.turns.append(key)
        return lambda: self.ended.append(key)


class _Fleet:
    def __init__(self, root: Path, pool: ThreadPool) -> None:
        self.upstream = _Upstream()
        self.shared = _Shared()
        self.metadata: list[Metadata] = []
        self.nodes = [self._node(root / f"node{n}", pool) for n in range(3)]

    def _node(self, root: Path, pool: ThreadPool) -> ManifestService:
        store = Store(str(root))
        store.prepare()
        metadata = Metadata(os.path.join(store.root, "metadata.sqlite"), IReactorThreads(reactor))
        self.metadata.append(metadata)
        disk = Disk(reactor, store, metadata, pool)
        return ManifestService(disk, RepoAccess(metadata, reactor), lambda upstream: TTL, shared=self.shared)

    async def lookup(self, node: int, reference: Digest | str,
                     accept: Sequence[str] = MANIFEST_MEDIA_TYPES) -> ManifestLookup:
        return await self.nodes[node].lookup(cast(Upstream, self.upstream), REPO, reference, accept)

    async def expire(self, node: int, tag: str) -> None:
        """Let C{tag}'s TTL pass on C{node}, and in the shared view."""
        row = await self.metadata[node].tag("docker.io", REPO, tag)
        assert row is not None
        await self.metadata[node].put_tag("docker.io", REPO, tag, row.digest, time.time() - TTL - 1)
        entry = self.shared.tags.get(("docker.io", REPO, tag))
        if entry is not None:
            self.shared.tags[("docker.io", REPO, tag)] = SharedTag(entry.digest, entry.media_type,
                                                                    time.time() - TTL - 1)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[_Fleet]:
    pool = ThreadPool(minthreads=0, maxthreads=2, name="test-disk")
    pool.start()
    world = _Fleet(tmp_path, pool)
    for metadata in world.metadata:
        pytest_twisted.blockon(metadata.open())
    yield world
    for metadata in world.metadata:
        pytest_twisted.blockon(metadata.close())
    pool.stop()


def _assert(lookup: ManifestLookup, body: bytes, result: CacheResult) -> None:
    assert (lookup.manifest.body, lookup.manifest.digest, lookup.manifest.media_type, lookup.result) == (
        body, _digest(body), OCI, result)


@pytest_twisted.ensureDeferred
async def test_a_tag_one_node_fetched_costs_the_other_nothing(fleet: _Fleet) -> None:
    body = _body("one")
    fleet.upstream.tag("v1", body)
    _assert(await fleet.lookup(0, "v1"), body, CacheResult.MISS)
    assert fleet.upstream.asked == [("GET", "v1")]
    shared = fleet.shared.tags[("docker.io", REPO, "v1")]
    assert (shared.digest, shared.media_type) == (_digest(body), OCI)
    assert fleet.shared.manifests[_digest(body)] == (OCI, body)
    assert fleet.shared.ttls == [TTL]
    # A hit: a pull the upstream did not count.
    _assert(await fleet.lookup(1, "v1"), body, CacheResult.HIT)
    assert fleet.upstream.asked == [("GET", "v1")]
    # Kept on node1 as checked when node0 checked it, not later.
    row = await fleet.metadata[1].tag("docker.io", REPO, "v1")
    assert row is not None and (row.digest, row.checked_at) == (str(_digest(body)), shared.checked_at)
    fleet.shared.manifests.clear()
    _assert(await fleet.lookup(1, "v1"), body, CacheResult.HIT)
    assert fleet.upstream.asked == [("GET", "v1")]


@pytest_twisted.ensureDeferred
async def test_shared_bytes_that_are_not_the_digest_are_ignored(fleet: _Fleet) -> None:
    body = _body("one")
    fleet.upstream.tag("v1", body)
    fleet.shared.tags[("docker.io", REPO, "v1")] = SharedTag(_digest(body), OCI, time.time())
    fleet.shared.manifests[_digest(body)] = (OCI, _body("forged"))
    _assert(await fleet.lookup(1, "v1"), body, CacheResult.MISS)
    assert fleet.upstream.asked == [("GET", "v1")]
    assert fleet.shared.manifests[_digest(body)] == (OCI, body)


@pytest_twisted.ensureDeferred
async def test_a_shared_tag_older_than_tag_ttl_is_asked_again(fleet: _Fleet) -> None:
    old, new = _body("old"), _body("new")
    fleet.upstream.tag("v1", new)
    fleet.shared.tags[("docker.io", REPO, "v1")] = SharedTag(_digest(old), OCI, time.time() - TTL - 1)
    fleet.shared.manifests[_digest(old)] = (OCI, old)
    _assert(await fleet.lookup(1, "v1"), new, CacheResult.MISS)
    assert fleet.upstream.asked == [("GET", "v1")]
    assert fleet.shared.tags[("docker.io", REPO, "v1")].digest == _digest(new)
    # A checked_at from the future (a clock far ahead) is not believed either.
    fleet.shared.tags[("docker.io", REPO, "v2")] = SharedTag(_digest(new), OCI, time.time() + 3600)
    fleet.upstream.tag("v2", new)
    await fleet.lookup(0, "v2")
    assert fleet.upstream.asked == [("GET", "v1"), ("GET", "v2")]


@pytest_twisted.ensureDeferred
async def test_one_revalidation_head_for_the_fleet(fleet: _Fleet) -> None:
    body = _body("one")
    fleet.upstream.tag("v1", body)
    await fleet.lookup(0, "v1")
    await fleet.lookup(1, "v1")
    await fleet.expire(0, "v1")
    await fleet.expire(1, "v1")
    _assert(await fleet.lookup(0, "v1"), body, CacheResult.HIT)
    assert fleet.upstream.asked == [("GET", "v1"), ("HEAD", "v1")]
    assert time.time() - fleet.shared.tags[("docker.io", REPO, "v1")].checked_at < 5
    _assert(await fleet.lookup(1, "v1"), body, CacheResult.HIT)
    assert fleet.upstream.asked == [("GET", "v1"), ("HEAD", "v1")]
    # And node1's own row is fresh again.
    _assert(await fleet.lookup(1, "v1"), body, CacheResult.HIT)
    assert fleet.upstream.asked == [("GET", "v1"), ("HEAD", "v1")]


@pytest_twisted.ensureDeferred
async def test_a_tag_that_moved_costs_the_fleet_one_head_and_one_get(fleet: _Fleet) -> None:
    old, new = _body("old"), _body("new")
    fleet.upstream.tag("v1", old)
    await fleet.lookup(0, "v1")
    await fleet.lookup(1, "v1")
    await fleet.expire(0, "v1")
    await fleet.expire(1, "v1")
    fleet.upstream.tag("v1", new)
    _assert(await fleet.lookup(0, "v1"), new, CacheResult.MISS)
    _assert(await fleet.lookup(1, "v1"), new, CacheResult.HIT)
    assert fleet.upstream.asked == [("GET", "v1"), ("HEAD", "v1"), ("GET", "v1")]


@pytest_twisted.ensureDeferred
async def test_a_manifest_by_digest_is_shared_once_the_repository_is_shown_to_hold_it(fleet: _Fleet) -> None:
    body = _body("child")
    fleet.upstream.tag("v1", body)
    digest = _digest(body)
    _assert(await fleet.lookup(0, digest), body, CacheResult.MISS)
    # node1 has no proof (this fake fleet shares none): a free HEAD, not a GET.
    _assert(await fleet.lookup(1, digest), body, CacheResult.HIT)
    assert fleet.upstream.asked == [("GET", str(digest)), ("HEAD", str(digest))]
    # A repository that does not hold it gets no shared bytes.
    fleet.upstream.content.clear()
    with pytest.raises(ManifestUnknown):
        await fleet.nodes[1].lookup(cast(Upstream, fleet.upstream), "library/other", digest, MANIFEST_MEDIA_TYPES)


@pytest_twisted.ensureDeferred
async def test_a_narrow_accept_does_not_change_what_others_get(fleet: _Fleet) -> None:
    body = _body("one")
    fleet.upstream.tag("v1", body)
    # A client accepting only Docker's type: the upstream's OCI manifest is not for it, nor shared.
    with pytest.raises(ManifestUnknown):
        await fleet.lookup(0, "v1", (DOCKER,))
    assert fleet.shared.tags == {}
    # One accepting only OCI's: its own variant.
    _assert(await fleet.lookup(0, "v1", (OCI,)), body, CacheResult.MISS)
    assert list(fleet.shared.tags) == [("docker.io", REPO, f"v1 {OCI}")]
    # Every type: the tag itself, asked of the upstream once.
    _assert(await fleet.lookup(1, "v1"), body, CacheResult.MISS)
    assert ("docker.io", REPO, "v1") in fleet.shared.tags
    # The tag's own manifest answers another node's narrow Accept that lists its type.
    asked = len(fleet.upstream.asked)
    _assert(await fleet.lookup(2, "v1", (OCI, DOCKER)), body, CacheResult.HIT)
    assert len(fleet.upstream.asked) == asked


@pytest_twisted.ensureDeferred
async def test_a_failing_upstream_still_serves_stale(fleet: _Fleet) -> None:
    body = _body("one")
    fleet.upstream.tag("v1", body)
    await fleet.lookup(1, "v1")
    await fleet.expire(1, "v1")
    fleet.upstream.down = True
    _assert(await fleet.lookup(1, "v1"), body, CacheResult.STALE)
    assert fleet.upstream.asked == [("GET", "v1"), ("HEAD", "v1")]


@pytest_twisted.ensureDeferred
async def test_a_node_asked_while_another_asks_the_upstream_waits_for_its_answer(fleet: _Fleet) -> None:
    body = _body("one")
    fleet.upstream.tag("v1", body)
    fleet.shared.busy.add("v1")  # another node is fetching it
    waiting = Deferred.fromCoroutine(fleet.lookup(1, "v1"))
    await deferLater(reactor, 0.3, lambda: None)
    assert not waiting.called and fleet.upstream.asked == []
    # The other node's answer lands.
    fleet.shared.manifests[_digest(body)] = (OCI, body)
    fleet.shared.tags[("docker.io", REPO, "v1")] = SharedTag(_digest(body), OCI, time.time())
    fleet.shared.busy.clear()
    _assert(await waiting, body, CacheResult.HIT)
    assert fleet.upstream.asked == []
    # A revalidation too.
    await fleet.expire(1, "v1")
    fleet.shared.busy.add("v1")
    waiting = Deferred.fromCoroutine(fleet.lookup(1, "v1"))
    await deferLater(reactor, 0.3, lambda: None)
    assert not waiting.called
    fleet.shared.tags[("docker.io", REPO, "v1")] = SharedTag(_digest(body), OCI, time.time())
    _assert(await waiting, body, CacheResult.HIT)
    assert fleet.upstream.asked == []
    assert fleet.shared.turns == []


@pytest_twisted.ensureDeferred
async def test_a_turn_ends_once_the_answer_is_shared(fleet: _Fleet) -> None:
    body = _body("one")
    fleet.upstream.tag("v1", body)
    await fleet.lookup(0, "v1")
    await fleet.lookup(0, _digest(body))
    await fleet.expire(0, "v1")
    await fleet.lookup(0, "v1")
    assert fleet.shared.turns == fleet.shared.ended == ["v1", "v1"]
    assert [method for method, _ in fleet.upstream.asked] == ["GET", "HEAD"]
    # A failing upstream ends it too.
    fleet.upstream.content.clear()
    with pytest.raises(ManifestUnknown):
        await fleet.lookup(0, "v2")
    assert fleet.shared.turns == fleet.shared.ended == ["v1", "v1", "v2"]


@pytest_twisted.ensureDeferred
async def test_a_node_that_has_the_turn_too_long_is_not_waited_for(
        fleet: _Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_manifest_fleet, "TURN_WAIT", 0.3)
    body = _body("one")
    fleet.upstream.tag("v1", body)
    fleet.shared.busy.add("v1")
    started = time.monotonic()
    _assert(await fleet.lookup(1, "v1"), body, CacheResult.MISS)
    assert 0.3 <= time.monotonic() - started < 2.0
    assert fleet.upstream.asked == [("GET", "v1")]
