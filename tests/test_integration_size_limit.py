"""
C{max_size} under concurrent commits, end to end: a real daemon under
twistd with a 24 MiB limit, five 14 MiB blobs on the real upstream
registry (behind the counting hop), each pulled by two clients at once, all
ten at the same time.  Any two of those blobs together exceed the limit, so
the daemon may keep only one at a time, however the commits interleave.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import urllib.parse
from collections.abc import Callable

import pytest

from ocitest import temp_files, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import MEDIA, Blob, MiB, big_layer
from ocitest.registry import Registry, push_blob

pytestmark = pytest.mark.integration

LIMIT = 24 * MiB
REPO = "ocitest-sizelimit"


@pytest.fixture(scope="module")
def blobs(upstream: Registry) -> list[Blob]:
    """Five distinct 14 MiB layers: more than half the limit each."""
    made = [big_layer(f"sizelimit/{index}", 14 * MiB, MEDIA.OCI_LAYER) for index in range(5)]
    for blob in made:
        push_blob(upstream.url, f"library/{REPO}", blob)
    return made


def _stored_at_once(cache_dir: str) -> int:
    """
    Bytes under C{blobs/} at one instant, or fewer; never more.  A walk is
    not atomic: it could see a file that was evicted before another one it
    sees was committed.  So every file found is looked at again once the
    walk is over, and counted only if it is still the same file: each
    counted file then existed from its first look to its second, and all
    the first looks came before all the second ones, so they all existed
    together when the walk ended.
    """
    seen: dict[str, tuple[int, int]] = {}
    for root, _, names in os.walk(os.path.join(cache_dir, "blobs")):
        for name in names:
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            seen[path] = (stat.st_ino, stat.st_size)
    total = 0
    for path, (inode, size) in seen.items():
        try:
            if os.stat(path).st_ino == inode:
                total += size
        except FileNotFoundError:
            pass
    return total


def _get_sha256(url: str, start: threading.Barrier) -> tuple[int, str, int]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    try:
        start.wait(30)
        conn.request("GET", parts.path)
        response = conn.getresponse()
        hasher = hashlib.sha256()
        total = 0
        while chunk := response.read(1 << 20):
            hasher.update(chunk)
            total += len(chunk)
        return response.status, "sha256:" + hasher.hexdigest(), total
    finally:
        conn.close()


def test_concurrent_commits_never_carry_blobs_past_max_size(
    daemon_factory: Callable[..., Daemon], blobs: list[Blob], hop: Hop,
) -> None:
    daemon = daemon_factory(max_size="24MiB")
    cache_dir = daemon.cache_dir
    # Each body takes about a second, so all ten downloads run side by
    # side and their commits come within moments of each other.
    hop.throttle = 14 * MiB
    clients = [blob for blob in blobs for _ in range(2)]
    start = threading.Barrier(len(clients))
    results: dict[int, tuple[int, str, int]] = {}
    errors: list[BaseException] = []

    def pull(index: int, blob: Blob) -> None:
        try:
            results[index] = _get_sha256(f"{daemon.url}/v2/{REPO}/blobs/{blob.digest}", start)
        except BaseException as e:  # reported below, with the others
            errors.append(e)

    threads = [threading.Thread(target=pull, args=(index, blob)) for index, blob in enumerate(clients)]
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_stored_at_once(cache_dir))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        # Every download settles (commits or discards its temp file) just
        # after its last byte: keep sampling until then.
        wait_for(lambda: not temp_files(cache_dir), timeout=30,
                 what="every download settled")
        time.sleep(0.2)
    finally:
        done.set()
        sampler.join(10)
        hop.throttle = None

    assert not errors, errors
    assert [results.get(index) for index in range(len(clients))] == [
        (200, blob.digest, blob.size) for blob in clients
    ]
    assert len(samples) > 50, "the sampler barely ran"
    assert max(samples) <= LIMIT, f"blobs/ held {max(samples)} bytes at once, over the {LIMIT}-byte limit"
    stored = {name: os.path.getsize(os.path.join(root, name))
              for root, _, names in os.walk(os.path.join(cache_dir, "blobs")) for name in names}
    assert sum(stored.values()) <= LIMIT
    # Not a cache that keeps nothing: one of them was kept.
    assert len(stored) == 1 and set(stored) <= {blob.hex for blob in blobs}
