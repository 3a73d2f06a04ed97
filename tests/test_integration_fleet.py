"""
A fleet of real daemons (twistd) sharing one real Redis (redis-server),
each with its own cache directory, in front of the real distribution
behind the counting hop: one upstream GET per digest across the nodes,
the right bytes to every client, a filler killed with SIGKILL taken over,
and Redis stopped and started again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocitest import free_port, http_request, temp_files, wait_for
from ocitest.ceph import Radosgw
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Blob, Image
from ocitest.redis import RedisServer
from ocitest.s3 import Store

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

CLIENTS_PER_NODE = 16
LOCK_TTL = "3s"




@dataclass
class Pull:
    node: int
    status: int
    sha256: str
    length: int
    first_byte_at: float | None
    ended_at: float


def _pull(daemon: Daemon, node: int, repo: str, blob: Blob, timeout: float = 60.0) -> Pull:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)
    hasher = hashlib.sha256()
    length = 0
    first: float | None = None
    try:
        conn.request("GET", f"/v2/{repo}/blobs/{blob.digest}")
        response = conn.getresponse()
        try:
            while chunk := response.read1(1 << 20):
                if first is None:
                    first = time.monotonic()
                hasher.update(chunk)
                length += len(chunk)
        except (OSError, http.client.HTTPException):
            pass  # cut short: the digest below says so
        return Pull(node, response.status, hasher.hexdigest(), length, first, time.monotonic())
    except (OSError, http.client.HTTPException):
        return Pull(node, 0, hasher.hexdigest(), length, first, time.monotonic())
    finally:
        conn.close()


def _pull_until_right(daemons: list[Daemon], node: int, repo: str, blob: Blob, attempts: int = 20) -> Pull:
    """A client that retries (on the next node, as behind a load balancer) until its bytes are right."""
    pull = _pull(daemons[node], node, repo, blob)
    for attempt in range(attempts):
        if pull.sha256 == blob.hex:
            return pull
        time.sleep(0.5)
        target = (node + 1 + attempt) % len(daemons) if not daemons[node].running else node
        pull = _pull(daemons[target], target, repo, blob)
    return pull


def _logged(daemon: Daemon, text: str) -> Callable[[], bool]:
    return lambda: text in daemon.log_text()


def _committed(daemon: Daemon, blob: Blob) -> Callable[[], bool]:
    return lambda: len(_blob_files(daemon, blob)) == 1


def _blob_files(daemon: Daemon, blob: Blob) -> list[str]:
    root = Path(daemon.cache_dir)
    return [str(p) for p in (root / "blobs").rglob(blob.hex)]


def _sha256_of(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


SECRET = "a-fleet-secret-of-some-length"


def _fleet(daemon_factory: Callable[..., Daemon], redis: RedisServer, tmp_path: Path, count: int,
           ports: list[int] | None = None, peer_urls: dict[int, str] | None = None,
           storage: dict[str, object] | None = None, lock_ttl: str = LOCK_TTL,
           cache: dict[str, object] | None = None, **options: object) -> list[Daemon]:
    """
    C{count} nodes; C{ports} are their internal endpoints' (default: free
    ones); C{peer_urls} overrides where the others are told a node is;
    C{storage} is their C{[storage]} table (default: each its own disk);
    C{cache}, keys of their C{[cache]} table; C{options} go to the
    C{daemon_factory} (C{tag_ttl="2s"}).
    """
    secret = tmp_path / "fleet.secret"
    secret.write_text(SECRET + "\n")
    nodes = []
    for index in range(count):
        port = ports[index] if ports else free_port()
        tables: dict[str, dict[str, object]] = {"fleet": {
            "redis": redis.url, "node": f"node{index}", "internal_listen": f"tcp:{port}:interface=127.0.0.1",
            "peer_url": (peer_urls or {}).get(index, f"http://127.0.0.1:{port}"), "secret_file": str(secret),
            "lock_ttl": lock_ttl,
        }}
        if storage is not None:
            tables["storage"] = storage
        nodes.append(daemon_factory(cache_extra=cache, extra_tables=tables, **options))
    for node in nodes:
        wait_for(_logged(node, "is in the fleet"), 15, what="the node to join the fleet")
    return nodes


def _blob_get(hop: Hop, blob: Blob) -> list[float]:
    return [r.finished or 0.0 for r in hop.matching("GET", blob.digest)]


def test_three_nodes_one_upstream_get(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    _three_nodes_one_upstream_get(_fleet(daemon_factory, redis_server, tmp_path, 3), hop, ocitest_images["big256"])


def test_three_nodes_on_one_bucket_one_upstream_get(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image], radosgw: Radosgw, bucket_name: str,
) -> None:
    """
    The issue's fleet: three nodes on one radosgw bucket and one Redis.
    One node fills the bucket; the others stream from it while it fills.
    """
    store = Store(radosgw, bucket_name, str(tmp_path / "keys"))
    image = ocitest_images["big256"]
    # The default lock TTL: a filler also uploading to S3, with 48 clients
    # on two cores, may renew its lock late.
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 3, storage=store.table, lock_ttl="10s")
    _three_nodes_one_upstream_get(daemons, hop, image, committed=False)
    blob = image.layers[0]
    wait_for(lambda: store.objects() == [store.key(blob)], 60, what="the blob in the bucket")
    assert store.uploads() == []
    assert store.sha256(store.key(blob)) == blob.digest


def test_a_blob_one_node_reads_outlives_another_nodes_blob_ttl(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image], radosgw: Radosgw, bucket_name: str,
) -> None:
    """
    Eviction and TTL over the bucket with the fleet's reads as their index:
    node0 stores a blob and never reads it again, node1 reads it every
    second; node0's passes (alone, it would expire it after blob_ttl) leave
    it, so node1 never goes back upstream.  Once nobody reads it, it expires.
    """
    store = Store(radosgw, bucket_name, str(tmp_path / "keys"))
    image = ocitest_images["oci"]
    blob = max(image.layers, key=lambda b: b.size)
    a, b = _fleet(daemon_factory, redis_server, tmp_path, 2, storage=store.table,
                  cache={"janitor_interval": "1s", "blob_ttl": "4s"})
    assert _pull(a, 0, image.repo, blob).sha256 == blob.hex
    wait_for(lambda: store.objects() == [store.key(blob)], 30, what="the blob in the bucket")
    reads_until = time.monotonic() + 14  # over three TTLs of node0's
    while time.monotonic() < reads_until:
        pull = _pull(b, 1, image.repo, blob)
        assert (pull.status, pull.sha256) == (200, blob.hex)
        assert store.objects() == [store.key(blob)]
        time.sleep(0.5)
    assert hop.count("GET", blob.digest) == 1, hop.summary()
    wait_for(lambda: store.objects() == [], 30, what="the blob nobody reads any more expired")
    assert a.running and b.running


def test_with_redis_stopped_each_node_expires_on_its_own_reads(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image], radosgw: Radosgw, bucket_name: str,
) -> None:
    """
    Redis gone, each node's bucket janitor does as a single node's, at
    once: node0, which never reads the blob, expires it though node1 reads
    it, and node1's clients are still served, from the upstream again,
    without waiting on Redis.  (The old code did the same: this is the
    fallback holding, not a gap.)
    """
    store = Store(radosgw, bucket_name, str(tmp_path / "keys"))
    image = ocitest_images["oci"]
    blob = max(image.layers, key=lambda b: b.size)
    a, b = _fleet(daemon_factory, redis_server, tmp_path, 2, storage=store.table,
                  cache={"janitor_interval": "1s", "blob_ttl": "3s"})
    assert _pull(a, 0, image.repo, blob).sha256 == blob.hex
    wait_for(lambda: store.objects() == [store.key(blob)], 30, what="the blob in the bucket")
    redis_server.stop()
    for daemon in (a, b):
        wait_for(_logged(daemon, "falling back to local singleflight"), 20, what="the fallback to be logged")
    reads_until = time.monotonic() + 30
    while hop.count("GET", blob.digest) < 2 and time.monotonic() < reads_until:
        started = time.monotonic()
        pull = _pull(b, 1, image.repo, blob)
        assert (pull.status, pull.sha256) == (200, blob.hex)
        assert pull.ended_at - started < 5, "a client waited"
        time.sleep(0.5)
    assert hop.count("GET", blob.digest) == 2, "node0 did not expire the blob on its own reads"
    assert a.running and b.running


def _three_nodes_one_upstream_get(daemons: list[Daemon], hop: Hop, image: Image, committed: bool = True) -> None:
    blob = image.layers[0]
    hop.throttle = 64 << 20  # 4 s for the blob: every node's clients arrive while it is downloading
    start = threading.Barrier(3 * CLIENTS_PER_NODE)

    def client(node: int) -> Pull:
        start.wait()
        return _pull(daemons[node], node, image.repo, blob)

    with ThreadPoolExecutor(3 * CLIENTS_PER_NODE) as pool:
        pulls = list(pool.map(client, [n for n in range(3) for _ in range(CLIENTS_PER_NODE)]))
    hop.wait_idle()

    assert hop.count("GET", blob.digest) == 1, hop.summary()
    assert [(p.status, p.length, p.sha256) for p in pulls] == [(200, blob.size, blob.hex)] * len(pulls)
    (upstream_ended,) = _blob_get(hop, blob)
    for node in range(3):
        firsts = [p.first_byte_at for p in pulls if p.node == node and p.first_byte_at is not None]
        assert min(firsts) < upstream_ended, f"node{node} sent nothing before the upstream body ended"
    if committed:
        # Every node verified and committed its own copy.
        for daemon in daemons:
            wait_for(_committed(daemon, blob), 20, what="the commit")
            assert [_sha256_of(path) for path in _blob_files(daemon, blob)] == [blob.hex]


def test_a_blob_one_node_stored_spares_the_others_the_upstream(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    image = ocitest_images["big1"]
    blob = image.layers[0]
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 3)
    first = _pull(daemons[0], 0, image.repo, blob)
    wait_for(_committed(daemons[0], blob), 20, what="the commit")
    # The lock released, and node0 recorded as holding the blob.
    wait_for(lambda: redis_server.command("EXISTS", f"fleet:lock:{blob.digest}") == b":0\r\n"
             and redis_server.command("SISMEMBER", f"fleet:have:{blob.digest}", "node0") == b":1\r\n",
             10, what="node0's holding in Redis")
    second = _pull(daemons[1], 1, image.repo, blob)
    assert (first.sha256, second.sha256) == (blob.hex, blob.hex)
    # One GET (node0's); node1 streamed node0's stored copy, and took
    # node0's proof that the repository holds the blob: no HEAD.
    assert hop.count("GET", blob.digest) == 1, hop.summary()
    assert hop.count("HEAD", blob.digest) == 0, hop.summary()
    # A HEAD on a third node: the size node0 verified, node0's proof, no upstream request.
    status, headers, _ = http_request(f"{daemons[2].url}/v2/{image.repo}/blobs/{blob.digest}", method="HEAD")
    assert (status, headers["content-length"]) == (200, str(blob.size))
    assert hop.count("HEAD", blob.digest) == 0, hop.summary()
    # A proof is per repository: another one must show it holds the blob.
    status, _, body = http_request(f"{daemons[1].url}/v2/library/ocitest-oci/blobs/{blob.digest}")
    assert (status, json.loads(body)["errors"][0]["code"]) == (404, "BLOB_UNKNOWN")
    assert hop.count("HEAD", blob.digest) == 1, hop.summary()


def test_the_internal_endpoint_wants_the_secret_and_serves_ranges(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    image = ocitest_images["big1"]
    blob = image.layers[0]
    port = free_port()
    (daemon,) = _fleet(daemon_factory, redis_server, tmp_path, 1, ports=[port])
    assert _pull(daemon, 0, image.repo, blob).sha256 == blob.hex
    wait_for(_committed(daemon, blob), 20, what="the commit")
    internal = f"http://127.0.0.1:{port}/blobs/{blob.digest}"
    for headers in ({}, {"Authorization": "Bearer not-the-secret"}, {"Authorization": SECRET}):
        status, _, body = http_request(internal, headers=headers)
        assert (status, json.loads(body)["errors"][0]["code"]) == (401, "UNAUTHORIZED")
    bearer = {"Authorization": f"Bearer {SECRET}"}
    status, headers, body = http_request(internal, headers={**bearer, "Range": "bytes=100-199"})
    assert (status, headers["content-range"], body) == (206, f"bytes 100-199/{blob.size}", blob.read_range(100, 200))
    status, _, body = http_request(f"http://127.0.0.1:{port}/blobs/sha256:{'0' * 64}", headers=bearer)
    assert (status, json.loads(body)["errors"][0]["code"]) == (404, "BLOB_UNKNOWN")
    status, _, body = http_request(f"http://127.0.0.1:{port}/blobs/sha256:..%2f", headers=bearer)
    assert (status, json.loads(body)["errors"][0]["code"]) == (400, "DIGEST_INVALID")


def test_filler_killed_mid_download(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    image = ocitest_images["big64"]
    blob = image.layers[0]
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 3)
    hop.throttle = 8 << 20  # 8 s for the blob
    with ThreadPoolExecutor(12) as pool:
        first = [pool.submit(_pull_until_right, daemons, 0, image.repo, blob) for _ in range(4)]
        wait_for(lambda: hop.bytes_sent_for(blob.digest) > 4 << 20, 30, what="node0 to be filling")
        others = [pool.submit(_pull_until_right, daemons, node, image.repo, blob)
                  for node in (1, 2) for _ in range(4)]
        wait_for(lambda: hop.bytes_sent_for(blob.digest) > 12 << 20, 30, what="the download to go on")
        filler = daemons[0].proc
        assert filler is not None
        filler.kill()  # SIGKILL: no cleanup, its lock is left to expire
        daemons[0].stop()  # reaps it: it died on purpose
        hop.throttle = None
        pulls = [future.result() for future in [*first, *others]]
    hop.wait_idle()

    assert [(p.status, p.length, p.sha256) for p in pulls] == [(200, blob.size, blob.hex)] * len(pulls)
    # The killed node's GET, then exactly one node took over.
    assert hop.count("GET", blob.digest) == 2, hop.summary()
    # Nothing partial anywhere: the killed node committed nothing, the others the verified blob.
    assert _blob_files(daemons[0], blob) == []
    for daemon in daemons[1:]:
        wait_for(_committed(daemon, blob), 20, what="the commit")
        assert [_sha256_of(path) for path in _blob_files(daemon, blob)] == [blob.hex]
        assert temp_files(daemon.cache_dir) == []


def test_filler_killed_mid_download_on_one_bucket(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image], radosgw: Radosgw, bucket_name: str,
) -> None:
    """
    The issue's kill -9 on the fleet's bucket: the filler dies with parts
    of its multipart upload sent; another node takes over, the bucket ends
    with the whole verified object and nothing partial, the janitor aborts
    the dead node's upload, and every retrying client gets the right bytes.
    """
    store = Store(radosgw, bucket_name, str(tmp_path / "keys"))
    image = ocitest_images["big64"]
    blob = image.layers[0]
    table = {**store.table, "abandon_uploads_after": "2s"}
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 3, storage=table, cache={"janitor_interval": "1s"})
    hop.throttle = 8 << 20  # 8 s for the blob
    with ThreadPoolExecutor(8) as pool:
        first = [pool.submit(_pull_until_right, daemons, 0, image.repo, blob) for _ in range(2)]
        # Past the first 5 MiB part: the dead node leaves an upload behind.
        wait_for(lambda: hop.bytes_sent_for(blob.digest) > 12 << 20, 30, what="node0 to be filling")
        others = [pool.submit(_pull_until_right, daemons, node, image.repo, blob)
                  for node in (1, 2) for _ in range(3)]
        wait_for(lambda: store.uploads() != [], 30, what="node0's upload to have begun")
        filler = daemons[0].proc
        assert filler is not None
        filler.kill()  # SIGKILL: no abort of its upload, its lock left to expire
        daemons[0].stop()
        hop.throttle = None
        pulls = [future.result() for future in [*first, *others]]
    hop.wait_idle()
    assert [(p.status, p.length, p.sha256) for p in pulls] == [(200, blob.size, blob.hex)] * len(pulls)
    assert hop.count("GET", blob.digest) == 2, hop.summary()
    wait_for(lambda: store.objects() == [store.key(blob)], 60, what="the taken-over blob in the bucket")
    assert store.sha256(store.key(blob)) == blob.digest
    wait_for(lambda: store.uploads() == [], 60, what="the dead node's upload aborted by a janitor")
    assert store.objects() == [store.key(blob)]


def test_an_unreachable_holder_is_given_up_on(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    image = ocitest_images["big64"]
    blob = image.layers[0]
    # node0 tells the fleet a wrong address: it fills, renews its lock, and
    # nobody can reach it (a partition).
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 2, peer_urls={0: f"http://127.0.0.1:{free_port()}"})
    hop.throttle = 4 << 20  # 16 s: node1 gives up on node0 (after twice the lock TTL) long before
    with ThreadPoolExecutor(2) as pool:
        filling = pool.submit(_pull, daemons[0], 0, image.repo, blob)
        wait_for(lambda: hop.bytes_sent_for(blob.digest) > 0, 30, what="node0 to be filling")
        asking = pool.submit(_pull, daemons[1], 1, image.repo, blob)
        wait_for(lambda: hop.count("GET", blob.digest) == 2, 30, what="node1 to fetch it itself")
        hop.throttle = None
        pulls = [filling.result(), asking.result()]
    assert [(p.status, p.sha256) for p in pulls] == [(200, blob.hex)] * 2
    assert "does not serve it; fetching it upstream" in daemons[1].log_text()


def test_redis_stopped_falls_back_to_local_singleflight(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    image = ocitest_images["oci"]
    alone, back = image.layers[0], image.layers[1]
    daemons = _fleet(daemon_factory, redis_server, tmp_path, 2)
    redis_server.stop()
    for daemon in daemons:
        wait_for(_logged(daemon, "falling back to local singleflight"), 20,
                 what="the fallback to be logged")
    hop.throttle = 1 << 20

    def pull_everywhere(blob: Blob) -> list[Pull]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda node: _pull(daemons[node], node, image.repo, blob), [0, 1] * 4))

    pulls = pull_everywhere(alone)
    hop.wait_idle()
    assert [(p.status, p.sha256) for p in pulls] == [(200, alone.hex)] * len(pulls)
    assert hop.count("GET", alone.digest) == 2  # one per node: each node's own singleflight

    redis_server.start()
    for daemon in daemons:
        wait_for(_logged(daemon, "resumes fleet mode"), 40, what="fleet mode again")
    pulls = pull_everywhere(back)
    hop.wait_idle()
    assert [(p.status, p.sha256) for p in pulls] == [(200, back.hex)] * len(pulls)
    assert hop.count("GET", back.digest) == 1
    for daemon in daemons:
        text = daemon.log_text()
        assert text.count("falling back to local singleflight") == 1
        assert text.count("resumes fleet mode") == 1

