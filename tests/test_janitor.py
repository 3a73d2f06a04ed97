"""
Capacity and the janitor on a real store and a real metadata database:
min_free, blob_ttl, recovery after a crash, abandoned temp files.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.python.threadpool import ThreadPool

from ocicache._spec._reference import Digest
from ocicache._storage._budget import Budget
from ocicache._storage._capacity import Capacity
from ocicache._storage._disk import Disk
from ocicache._storage._janitor import ABANDONED_AFTER, Janitor
from ocicache._storage._metadata import Metadata
from ocicache._storage._store import Kind, Store


@dataclass
class _Parts:
    store: Store
    pool: ThreadPool
    metadata: Metadata


def _disk(parts: _Parts) -> Disk:
    return Disk(reactor, parts.store, parts.metadata, parts.pool)


def _capacity(parts: _Parts, max_size: int | None = None, min_free: int | None = None) -> Capacity:
    """The blobs' book, alone in a budget of C{max_size} and C{min_free}."""
    return Capacity(Budget(parts.store.root, max_size, min_free), _disk(parts))


def _blob(store: Store, seed: int, size: int) -> Digest:
    data = bytes([seed % 256]) * size
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    store.write_small(Kind.BLOB, digest, data)
    return digest


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[_Parts]:
    store = Store(str(tmp_path / "cache"))
    store.prepare()
    pool = ThreadPool(minthreads=0, maxthreads=2, name="test-disk")
    pool.start()
    # The global reactor's static type names only its common interfaces;
    # adapting it to IReactorThreads returns the reactor itself.
    metadata = Metadata(os.path.join(store.root, "metadata.sqlite"), IReactorThreads(reactor))
    yield _Parts(store=store, pool=pool, metadata=metadata)
    pool.stop()


@pytest_twisted.ensureDeferred
async def test_recovery_drops_rows_without_files_and_adopts_or_removes_orphans(parts: _Parts) -> None:
    store, metadata = parts.store, parts.metadata
    await metadata.open()
    try:
        kept = _blob(store, 1, 1000)
        await metadata.put_blob(str(kept), 1000, time.time())
        # A row whose file is gone (deleted by hand, or lost).
        gone = Digest("sha256", "ab" * 32)
        await metadata.put_blob(str(gone), 50, time.time())
        # A file with no row (a crash between rename and insert): adopted.
        orphan = _blob(store, 2, 2000)
        # A file with no row that does not verify: removed.
        liar = Digest("sha256", "cd" * 32)
        os.makedirs(os.path.dirname(store.path(Kind.BLOB, liar)), exist_ok=True)
        with open(store.path(Kind.BLOB, liar), "wb") as f:
            f.write(b"not what the name says")
        capacity = _capacity(parts)
        janitor = Janitor(_disk(parts), capacity, None)
        report = await janitor.recover()
        assert (report.dropped_rows, report.adopted, report.removed_unverified) == (1, 1, 1)
        assert {row.digest for row in await metadata.blobs()} == {str(kept), str(orphan)}
        assert store.size(Kind.BLOB, liar) is None
        assert capacity.size == 3000 and kept in capacity.policy and orphan in capacity.policy
    finally:
        await metadata.close()


@pytest_twisted.ensureDeferred
async def test_blob_ttl_expires_what_was_not_read(parts: _Parts) -> None:
    store, metadata = parts.store, parts.metadata
    await metadata.open()
    try:
        old = _blob(store, 3, 100)
        fresh = _blob(store, 4, 100)
        await metadata.put_blob(str(old), 100, time.time() - 7200)
        await metadata.put_blob(str(fresh), 100, time.time() - 7200)
        capacity = _capacity(parts)
        janitor = Janitor(_disk(parts), capacity, blob_ttl=3600)
        await janitor.recover()
        capacity.accessed(fresh)  # read just now: the batched access counts
        report = await janitor.run()
        assert (report.expired, report.expired_bytes) == (1, 100)
        assert store.size(Kind.BLOB, old) is None and store.size(Kind.BLOB, fresh) == 100
        assert [row.digest for row in await metadata.blobs()] == [str(fresh)]
        assert old not in capacity.policy and capacity.size == 100
    finally:
        await metadata.close()


@pytest_twisted.ensureDeferred
async def test_make_room_keeps_min_free(parts: _Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    store, metadata = parts.store, parts.metadata
    await metadata.open()
    try:
        capacity = _capacity(parts, min_free=1000)
        a, b = _blob(store, 5, 600), _blob(store, 6, 600)
        for digest in (a, b):
            await metadata.put_blob(str(digest), 600, time.time())
            capacity.committed(digest, 600)
        def statvfs(path: str) -> Any:
            # 1500 bytes free, plus whatever eviction has deleted since.
            return SimpleNamespace(f_blocks=10_000, f_frsize=1, f_bavail=1500 + (1200 - capacity.size))

        monkeypatch.setattr("ocicache._storage._budget.os.statvfs", statvfs)
        # 1500 free - 400 new = 1100 >= 1000: nothing to evict.
        assert await capacity.make_room(400) is True
        assert capacity.size == 1200
        # 1500 - 1000 = 500 < 1000: one 600-byte blob must go, the oldest.
        assert await capacity.make_room(1000) is True
        assert capacity.size == 600
        assert store.size(Kind.BLOB, a) is None and store.size(Kind.BLOB, b) == 600
        # Asking for more than eviction can ever free: not kept.
        assert await capacity.make_room(5000) is False
    finally:
        await metadata.close()


@pytest_twisted.ensureDeferred
async def test_make_room_evicts_to_the_low_water_mark_and_refuses_giants(parts: _Parts) -> None:
    store, metadata = parts.store, parts.metadata
    await metadata.open()
    try:
        capacity = _capacity(parts, 1000)
        blobs = [_blob(store, 10 + i, 200) for i in range(4)]
        for digest in blobs:
            capacity.committed(digest, 200)
        assert await capacity.make_room(1001) is False  # larger than the whole cache
        assert capacity.size == 800
        assert await capacity.make_room(300) is True
        # 800 + 300 > 1000: down to 900 - 300 = 600, oldest first.
        assert capacity.size <= 600
        assert store.size(Kind.BLOB, blobs[0]) is None and store.size(Kind.BLOB, blobs[-1]) == 200
    finally:
        await metadata.close()


@pytest_twisted.ensureDeferred
async def test_abandoned_temp_files_go_and_live_ones_stay(parts: _Parts) -> None:
    store, metadata = parts.store, parts.metadata
    await metadata.open()
    try:
        live = store.new_temp("live")
        dead = store.new_temp("dead")
        fresh = store.new_temp("fresh")
        old = time.time() - ABANDONED_AFTER - 60
        for temp in (live, dead):
            os.utime(temp.path, (old, old))
        dead.close()  # its writer is gone: nobody holds it any more
        capacity = _capacity(parts)
        janitor = Janitor(_disk(parts), capacity, None,
                          live_temp_files=lambda: [live.path])
        report = await janitor.run()
        assert report.temp_removed == 1
        assert os.path.exists(live.path) and os.path.exists(fresh.path)
        assert not os.path.exists(dead.path)
        for temp in (live, dead, fresh):
            temp.discard()
    finally:
        await metadata.close()




def _manifest(store: Store, document: dict[str, Any]) -> Digest:
    body = json.dumps(document).encode()
    digest = Digest("sha256", hashlib.sha256(body).hexdigest())
    store.write_small(Kind.MANIFEST, digest, body)
    return digest


@pytest_twisted.ensureDeferred
async def test_unreferenced_manifests_expire_an_index_before_its_children(parts: _Parts) -> None:
    """
    A manifest goes once no tag resolves to it, no stored index refers to
    it, and it was not read for manifest_ttl; a child only after its index.
    """
    store, metadata = parts.store, parts.metadata
    await metadata.open()
    try:
        old = time.time() - 100 * 86400
        child = _manifest(store, {"mediaType": "application/vnd.oci.image.manifest.v1+json", "n": 1})
        index = _manifest(store, {"mediaType": "application/vnd.oci.image.index.v1+json",
                                  "manifests": [{"digest": str(child)}]})
        tagged = _manifest(store, {"mediaType": "application/vnd.oci.image.manifest.v1+json", "n": 2})
        recent = _manifest(store, {"mediaType": "application/vnd.oci.image.manifest.v1+json", "n": 3})
        for digest in (child, index, tagged, recent):
            await metadata.put_manifest(str(digest), "application/json", 10, old)
        await metadata.put_children(str(index), [str(child)])
        await metadata.put_tag("docker.io", "library/a", "v1", str(tagged), time.time())
        removed: list[str] = []
        janitor = Janitor(_disk(parts), _capacity(parts), None, manifest_ttl=30 * 86400,
                          manifest_accesses=lambda: {str(recent): time.time()}, on_manifests_removed=removed.extend)
        first = await janitor.run()
        assert removed == [str(index)] and first.manifests_removed == 1
        assert store.read(Kind.MANIFEST, index) is None and store.read(Kind.MANIFEST, child) is not None
        await janitor.run()
        assert removed == [str(index), str(child)]
        assert store.read(Kind.MANIFEST, child) is None
        # Still referenced by a tag, or read lately: kept.
        assert store.read(Kind.MANIFEST, tagged) is not None
        assert store.read(Kind.MANIFEST, recent) is not None
    finally:
        await metadata.close()


@pytest_twisted.ensureDeferred
async def test_manifests_are_kept_forever_without_a_ttl(parts: _Parts) -> None:
    store, metadata = parts.store, parts.metadata
    await metadata.open()
    try:
        lonely = _manifest(store, {"mediaType": "application/vnd.oci.image.manifest.v1+json"})
        await metadata.put_manifest(str(lonely), "application/json", 10, 0.0)
        janitor = Janitor(_disk(parts), _capacity(parts), None, manifest_ttl=None)
        assert (await janitor.run()).manifests_removed == 0
        assert store.read(Kind.MANIFEST, lonely) is not None
    finally:
        await metadata.close()
