"""
Several daemons on one C{[cache] dir} behave as one daemon (issue 23, "one
store for all workers"): two real C{twistd -n ocicache} processes on one
store, each with its own port, so that each client talks to the process
the test chooses; and C{[server] workers = 2}.  Against distribution
behind the counting hop.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ocitest import http_request, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop, HopRequest
from ocitest.images import MEDIA, Blob, Image, MiB, big_layer
from ocitest.registry import Registry, push_blob
from ocitest.workers import only, served_by, wait_ready

pytestmark = pytest.mark.integration

REPO = "ocitest-shared"
MAX_SIZE = 5 * MiB
PART = 2 * MiB
"""Each blob's size: two fit in MAX_SIZE, three do not."""


@pytest.fixture(scope="module")
def blobs(upstream: Registry) -> list[Blob]:
    made = [big_layer(f"shared-store/{n}", PART, MEDIA.OCI_LAYER) for n in range(8)]
    for blob in made:
        push_blob(upstream.url, f"library/{REPO}", blob)
    return made


@pytest.fixture
def pair(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> Callable[..., tuple[Daemon, Daemon]]:
    """Start two daemons on one store (the same config but their ports)."""

    def start(**config: object) -> tuple[Daemon, Daemon]:
        store = str(tmp_path / "store")
        return daemon_factory(cache_dir=store, **config), daemon_factory(cache_dir=store, **config)

    return start


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        body: bytes = response.read()
        return body


def _blob_bytes(store: str) -> int:
    """Bytes of the blob files in the store now."""
    total = 0
    for top, _, names in os.walk(os.path.join(store, "blobs")):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(top, name))
            except FileNotFoundError:
                pass  # evicted meanwhile
    return total


def _downloading(store: str) -> bool:
    """Whether a download's temp file is in the store's tmp/."""
    return any(entry.is_file() for entry in os.scandir(os.path.join(store, "tmp")))


@pytest.fixture
def watch() -> Iterator[Callable[[str], list[int]]]:
    """Sample a store's blob bytes every few milliseconds while the test runs; the samples so far."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(store: str) -> list[int]:
        samples: list[int] = []

        def sample() -> None:
            while not stop.wait(0.005):
                samples.append(_blob_bytes(store))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        threads.append(thread)
        return samples

    yield start
    stop.set()
    for thread in threads:
        thread.join()


def test_max_size_holds_under_commits_from_both(pair: Callable[..., tuple[Daemon, Daemon]], blobs: list[Blob],
                                                hop: Hop, watch: Callable[[str], list[int]]) -> None:
    one, two = pair(max_size=f"{MAX_SIZE // MiB}MiB")
    store = one.cache_dir
    samples = watch(store)

    def pull(daemon: Daemon, blob: Blob) -> None:
        body = _get(f"{daemon.url}/v2/{REPO}/blobs/{blob.digest}")
        assert len(body) == blob.size and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest

    # Four blobs at once on each process: each alone would keep two of
    # its own, twice what the store may hold between them.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: pull((one, two)[n % 2], blobs[n]), range(8)))
    wait_for(lambda: not _downloading(store), timeout=20, what="every commit settled")
    assert 0 < _blob_bytes(store) <= MAX_SIZE
    assert max(samples) <= MAX_SIZE, max(samples)
    # Then in turns: each process commits after the other evicted and stored.
    for n, blob in enumerate(blobs[:4]):
        pull((two, one)[n % 2], blob)
        wait_for(lambda: not _downloading(store), timeout=20, what="the commit settled")
        assert 0 < _blob_bytes(store) <= MAX_SIZE
    assert max(samples) <= MAX_SIZE, max(samples)
    # Each process serves what the other kept, and fetches again what it evicted.
    for blob in blobs:
        pull(one, blob)
        pull(two, blob)
    assert max(samples) <= MAX_SIZE, max(samples)


def _most_at_once(requests: list[HopRequest]) -> int:
    """The most of C{requests} the upstream was answering at one instant."""
    events = sorted([(r.started, 1) for r in requests] + [(r.finished or r.started, -1) for r in requests],
                    key=lambda event: (event[0], event[1]))
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def test_max_downloads_holds_for_the_host(pair: Callable[..., tuple[Daemon, Daemon]], blobs: list[Blob],
                                          hop: Hop) -> None:
    one, two = pair(cache_extra={"max_downloads": 1})
    hop.throttle = 8 * MiB  # a quarter of a second a blob: the fetches would overlap
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda n: _get(f"{(one, two)[n % 2].url}/v2/{REPO}/blobs/{blobs[n].digest}"),
                               range(4)))
    assert [hashlib.sha256(body).hexdigest() for body in bodies] == [blob.hex for blob in blobs[:4]]
    fetches = [r for r in hop.matching("GET", "/blobs/") if r.status == 200]
    assert len(fetches) == 4
    assert _most_at_once(fetches) == 1


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)


def test_a_404_learnt_by_one_is_not_asked_again_by_the_other(pair: Callable[..., tuple[Daemon, Daemon]],
                                                              hop: Hop) -> None:
    one, two = pair(cache_extra={"negative_ttl": "5m", "negative_digest_ttl": "5m"})
    missing = "sha256:" + hashlib.sha256(b"shared-store: never pushed").hexdigest()
    tag = "never-pushed"
    for daemon in (one, two, one, two):
        assert _status(f"{daemon.url}/v2/{REPO}/blobs/{missing}") == 404
        assert _status(f"{daemon.url}/v2/{REPO}/manifests/{tag}") == 404
    # One upstream request for each, whichever process was asked.
    assert hop.count(path_contains=missing) == 1
    assert hop.count(path_contains=f"/manifests/{tag}") == 1


def _answer(url: str) -> tuple[int, dict[str, str]]:
    """A GET's status and headers (lower-case names)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            return int(response.status), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code), {k.lower(): v for k, v in e.headers.items()}


def test_a_pull_limit_told_to_one_stops_the_other(pair: Callable[..., tuple[Daemon, Daemon]], blobs: list[Blob],
                                                  hop: Hop) -> None:
    one, two = pair()
    # Docker Hub's pull limit: its quota spent, a window of 30 s.
    hop.answer(429, {"ratelimit-limit": "100;w=30", "ratelimit-remaining": "0;w=30"}, path_contains="/manifests/",
               message="You have reached your pull rate limit.")
    status, headers = _answer(f"{one.url}/v2/{REPO}/manifests/latest")
    assert status == 429 and int(headers["retry-after"]) == 30
    # The other process does not ask the upstream anything meanwhile.
    for url in (f"{two.url}/v2/{REPO}/manifests/v2", f"{two.url}/v2/{REPO}/blobs/{blobs[0].digest}"):
        status, headers = _answer(url)
        assert status == 429 and 25 <= int(headers["retry-after"]) <= 30, (url, headers)
    assert hop.count() == 1, hop.summary()
    assert "rate limited, as another process was told" in two.log_text()


TAG_TTL = 1.0


def _tagged(daemon: Daemon, image: Image, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return http_request(f"{daemon.url}/v2/docker.io/{image.repo}/manifests/{image.reference}", method,
                        headers={"Accept": ", ".join(MEDIA.MANIFEST_TYPES)})


def test_a_tag_is_revalidated_once_per_tag_ttl_across_processes(
        pair: Callable[..., tuple[Daemon, Daemon]], ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["oci"]
    one, two = pair(tag_ttl=f"{TAG_TTL:g}s")
    status, _, body = _tagged(one, image)
    assert status == 200 and body == image.manifest_bytes
    # Fetched by one: fresh for the other too.
    assert _tagged(two, image)[0] == 200
    assert hop.count("GET", "/manifests/") == 1 and hop.count("HEAD", "/manifests/") == 0, hop.summary()
    # Expired: revalidated by one, fresh for the other within tag_ttl.
    time.sleep(TAG_TTL * 1.3)
    assert _tagged(one, image)[0] == 200
    assert _tagged(two, image)[0] == 200
    assert hop.count("HEAD", "/manifests/") == 1, hop.summary()
    # Expired again, and asked of both at the same instant, many times:
    # while one asks the upstream, the other waits for its answer.
    time.sleep(TAG_TTL * 1.3)
    hop.reset()
    hop.delay = 0.5
    barrier = threading.Barrier(16)

    def client(index: int) -> tuple[int, str | None]:
        barrier.wait(30)
        status, headers, _ = _tagged((one, two)[index % 2], image, ("GET", "HEAD")[index // 2 % 2])
        return status, headers.get("docker-content-digest")

    with ThreadPoolExecutor(16) as pool:
        answers = set(pool.map(client, range(16)))
    assert answers == {(200, image.manifest_digest)}
    hop.wait_idle()
    assert hop.count("HEAD", "/manifests/") == 1, hop.summary()
    assert hop.count("GET", "/manifests/") == 0, hop.summary()


def test_max_size_holds_under_commits_from_two_workers(daemon_factory: Callable[..., Daemon], blobs: list[Blob],
                                                       hop: Hop, watch: Callable[[str], list[int]]) -> None:
    daemon = daemon_factory(server_extra={"workers": 2}, max_size=f"{MAX_SIZE // MiB}MiB")
    pids = wait_ready(daemon.log_text, 2)
    store = daemon.cache_dir
    samples = watch(store)

    def pull(blob: Blob) -> None:
        body = _get(f"{daemon.url}/v2/{REPO}/blobs/{blob.digest}")
        assert len(body) == blob.size and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest

    # Each worker in turn (the other stopped) stores as much as max_size
    # allows: the second evicts what the first stored.
    for index, pair_of_blobs in ((0, blobs[:2]), (1, blobs[2:4])):
        with only(pids, index):
            for blob in pair_of_blobs:
                pull(blob)
            wait_for(lambda: not _downloading(store), timeout=20, what="every commit settled")
        assert 0 < _blob_bytes(store) <= MAX_SIZE
    # Then both at once, eight clients.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(pull, blobs))
    wait_for(lambda: not _downloading(store), timeout=20, what="every commit settled")
    assert 0 < _blob_bytes(store) <= MAX_SIZE
    assert max(samples) <= MAX_SIZE, max(samples)
    # Each worker served (and stored) its turn's blobs.
    def workers_of(blob: Blob) -> list[int]:
        return served_by(daemon.log_text(), f"/v2/{REPO}/blobs/{blob.digest}")

    wait_for(lambda: sum(len(workers_of(blob)) for blob in blobs) == 12, timeout=10, what="every access event")
    assert 0 in workers_of(blobs[0]) and 1 in workers_of(blobs[2])
