"""
The chaos run (issue 19): three fleet nodes on one radosgw bucket and one
Redis, in front of a real docker-registry behind the counting hop, under a
steady pull load while nodes are killed with SIGKILL (and restarted), Redis
and radosgw are restarted, and upstream connections are cut.

Outside the default suite (marker C{chaos}); run it with::

    python -m pytest -m chaos tests/test_chaos.py [--minutes 5] [--chaos-report report.json]

It reports bytes served with a wrong digest and partial objects committed
(both must be 0: the test fails otherwise), client requests failed (by
kind), and upstream GETs per distinct blob; docs/operations/chaos.md holds
the figures of a run.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ocitest import free_port, wait_for
from ocitest.ceph import Radosgw
from ocitest.daemon import Daemon, Upstream, start_daemon
from ocitest.hop import Hop
from ocitest.images import Blob
from ocitest.redis import RedisServer
from ocitest.registry import Registry, push_blob
from ocitest.s3 import Store

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REPO = "chaos/load"
NODES = 3
CLIENTS = 6
SECRET = "a-fleet-secret-of-some-length"
KiB, MiB = 1 << 10, 1 << 20
RECOVERY = 10.0
"""Seconds after a disturbance ends that upstream GETs are still laid at its door."""


@dataclass
class Tally:
    """What the clients saw, and what the chaos did; guarded by C{lock}."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    ok: int = 0
    bytes_ok: int = 0
    wrong_digest: int = 0
    wrong_digest_bytes: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    actions: list[tuple[float, str]] = field(default_factory=list)
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    """(kind, start, end) of each disturbance, in time.monotonic()."""
    pulled: set[str] = field(default_factory=set)


def _random_blob() -> Blob:
    data = secrets.token_bytes(random.choice([64 * KiB, 256 * KiB, MiB, 3 * MiB, 6 * MiB]))
    return Blob(digest="sha256:" + hashlib.sha256(data).hexdigest(), media_type="application/octet-stream",
                size=len(data), _data=data)


def _pull(node: Daemon, blob: Blob, tally: Tally) -> None:
    """One client GET, checked against the blob's digest and size."""
    hasher = hashlib.sha256()
    length = 0
    outcome = "ok"
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
    try:
        conn.request("GET", f"/v2/{REPO}/blobs/{blob.digest}")
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            outcome = f"status {response.status}"
        else:
            try:
                while chunk := response.read1(MiB):
                    hasher.update(chunk)
                    length += len(chunk)
            except (OSError, http.client.HTTPException):
                pass
            if length < blob.size:
                outcome = "cut short (the client sees it: fewer bytes than Content-Length)"
            elif "sha256:" + hasher.hexdigest() != blob.digest:
                outcome = "wrong digest"
    except ConnectionRefusedError:
        outcome = "connection refused (the node was killed and not yet restarted)"
    except (OSError, http.client.HTTPException) as e:
        outcome = f"no answer ({type(e).__name__})"
    finally:
        conn.close()
    with tally.lock:
        tally.requests += 1
        tally.pulled.add(blob.digest)
        if outcome == "ok":
            tally.ok += 1
            tally.bytes_ok += length
        elif outcome == "wrong digest":
            tally.wrong_digest += 1
            tally.wrong_digest_bytes += length
        else:
            tally.failed[outcome] += 1


def _kill9(node: Daemon) -> None:
    if node.proc is not None and node.proc.poll() is None:
        node.proc.kill()
        node.proc.wait(10)
    node.proc = None


def _chaos(nodes: list[Daemon], redis: RedisServer, radosgw: Radosgw, hop: Hop, tally: Tally,
           stop: threading.Event, rng: random.Random) -> None:
    """Every 5 to 12 s, one of: a node killed and restarted, Redis or radosgw restarted, upstream cut."""
    started = time.monotonic()

    def note(text: str) -> None:
        with tally.lock:
            tally.actions.append((round(time.monotonic() - started, 1), text))

    if os.environ.get("OCITEST_CHAOS_CALM"):
        return  # the same load without the chaos: the baseline
    while not stop.wait(rng.uniform(5, 12)):
        action = rng.choice(["kill", "kill", "redis", "radosgw", "cut", "refuse"])
        began = time.monotonic()
        if action == "kill":
            index = rng.randrange(len(nodes))
            note(f"kill -9 node{index}")
            _kill9(nodes[index])
            time.sleep(rng.uniform(0.5, 3))
            nodes[index].start(timeout=60)
            note(f"node{index} restarted")
        elif action == "redis":
            note("Redis stopped")
            redis.stop()
            time.sleep(rng.uniform(1, 5))
            redis.start()
            note("Redis started")
        elif action == "radosgw":
            note("radosgw stopped")
            radosgw.stop_gateway()
            time.sleep(rng.uniform(1, 5))
            radosgw.start_gateway()
            note("radosgw started")
        elif action == "cut":
            times = rng.randint(1, 4)
            note(f"the next {times} upstream blob bodies cut mid-stream")
            hop.fail_mid_stream(rng.randint(1, 512) * KiB, path_contains="/blobs/", times=times)
        else:
            note("upstream refuses connections")
            hop.stop()
            time.sleep(rng.uniform(1, 4))
            hop.start()
            note("upstream back")
        kinds = {"kill": "a node killed", "redis": "Redis down", "radosgw": "radosgw down",
                 "cut": "upstream bodies cut", "refuse": "upstream refusing connections"}
        with tally.lock:
            tally.windows.append((kinds[action], began, time.monotonic()))


def _clients(nodes: list[Daemon], blobs: list[Blob], blobs_lock: threading.Lock, tally: Tally,
             stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        with blobs_lock:
            # Mostly the newest blobs (cold on some nodes), some older ones.
            pool = blobs[-4:] if rng.random() < 0.6 else blobs
            blob = rng.choice(pool)
        _pull(rng.choice(nodes), blob, tally)
        stop.wait(0.1)


def _feeder(registry: Registry, blobs: list[Blob], blobs_lock: threading.Lock, stop: threading.Event) -> None:
    """A new blob in the upstream every 2 s: cold fetches all along."""
    while not stop.wait(2.0):
        blob = _random_blob()
        push_blob(registry.url, REPO, blob)
        with blobs_lock:
            blobs.append(blob)


def _partial_commits(nodes: list[Daemon], store: Store) -> tuple[int, int]:
    """(objects checked, objects whose bytes are not their digest) on the nodes' disks and in the bucket."""
    checked = bad = 0
    for node in nodes:
        for path in (Path(node.cache_dir) / "blobs").rglob("*"):
            if path.is_file() and len(path.name) == 64:
                checked += 1
                hasher = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(MiB):
                        hasher.update(chunk)
                bad += hasher.hexdigest() != path.name
    for key in store.objects():
        if "/blobs/sha256/" in key:
            checked += 1
            bad += store.sha256(key) != "sha256:" + key.rsplit("/", 1)[1]
    return checked, bad


def _critical_lines(node: Daemon) -> int:
    """Log lines at level critical (a bug: an unexpected error) or holding a traceback."""
    return sum(1 for line in node.log_text().splitlines() if "#critical]" in line or "Traceback" in line)


def _joined(node: Daemon) -> bool:
    return "is in the fleet" in node.log_text()


def test_chaos(tmp_path: Path, radosgw: Radosgw, bucket_name: str, request: pytest.FixtureRequest) -> None:
    minutes: float = request.config.getoption("--minutes")
    report_path: str | None = request.config.getoption("--chaos-report")
    seed = int(os.environ.get("OCITEST_CHAOS_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    registry = Registry(str(tmp_path / "upstream")).start()
    hop = Hop(registry.url).start()
    redis = RedisServer(str(tmp_path / "redis")).start()
    store = Store(radosgw, bucket_name, str(tmp_path / "keys"))
    (tmp_path / "fleet.secret").write_text(SECRET + "\n")
    nodes: list[Daemon] = []
    stop = threading.Event()
    tally = Tally()
    blobs = [_random_blob() for _ in range(4)]
    for blob in blobs:
        push_blob(registry.url, REPO, blob)
    blobs_lock = threading.Lock()
    threads: list[threading.Thread] = []
    try:
        for index in range(NODES):
            port = free_port()
            nodes.append(start_daemon(
                str(tmp_path / f"node{index}"), [Upstream("docker.io", hop.url, default=True)], timeout=60,
                extra_tables={
                    "fleet": {"redis": redis.url, "node": f"node{index}",
                              "internal_listen": f"tcp:{port}:interface=127.0.0.1",
                              "peer_url": f"http://127.0.0.1:{port}",
                              "secret_file": str(tmp_path / "fleet.secret"), "lock_ttl": "10s"},
                    "storage": store.table}))
        for node in nodes:
            wait_for(functools.partial(_joined, node), 30, what="the fleet")
        work: list[Callable[[], None]] = [
            functools.partial(_chaos, nodes, redis, radosgw, hop, tally, stop, rng),
            functools.partial(_feeder, registry, blobs, blobs_lock, stop),
            *[functools.partial(_clients, nodes, blobs, blobs_lock, tally, stop, seed + i) for i in range(CLIENTS)],
        ]
        threads = [threading.Thread(target=target, daemon=True) for target in work]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        stop.wait(minutes * 60)
        stop.set()
        for thread in threads:
            thread.join(180)
        elapsed = time.monotonic() - started
        # Whatever the chaos left down comes back before the books are read.
        hop.start()
        for node in nodes:
            if not node.running:
                node.start(timeout=60)
        hop.wait_idle(60)
        time.sleep(5)  # replications into the bucket in flight complete or are aborted
        checked, partial = _partial_commits(nodes, store)
        critical = {f"node{index}": _critical_lines(node) for index, node in enumerate(nodes)}
        if report_path:
            for index, node in enumerate(nodes):
                shutil.copy(node.log_path, f"{report_path}.node{index}.log")
    finally:
        stop.set()
        for node in nodes:
            node.stop()
        redis.stop()
        hop.stop()
        registry.stop()
    gets = collections.Counter(r.path.rsplit("/", 1)[1] for r in hop.requests
                               if r.method == "GET" and "/blobs/sha256:" in r.path)
    whole = collections.Counter(r.path.rsplit("/", 1)[1] for r in hop.requests
                                if r.method == "GET" and "/blobs/sha256:" in r.path and r.status == 200
                                and r.injected is None and r.bytes_sent == r.content_length)
    per_blob = [gets.get(digest, 0) for digest in sorted(tally.pulled)]
    during: collections.Counter[str] = collections.Counter()
    for r in hop.requests:
        if r.method == "GET" and "/blobs/sha256:" in r.path:
            kinds = {kind for kind, start, end in tally.windows if start <= r.started <= end + RECOVERY}
            during[" + ".join(sorted(kinds)) or "calm"] += 1
    per_blob_whole = [whole.get(digest, 0) for digest in sorted(tally.pulled)]
    report: dict[str, Any] = {
        "seed": seed, "minutes": round(elapsed / 60, 2), "nodes": NODES, "clients": CLIENTS,
        "requests": tally.requests, "ok": tally.ok, "bytes_ok": tally.bytes_ok,
        "wrong_digest": tally.wrong_digest, "wrong_digest_bytes": tally.wrong_digest_bytes,
        "failed": dict(tally.failed), "failed_total": sum(tally.failed.values()),
        "objects_checked": checked, "partial_objects_committed": partial,
        "distinct_blobs": len(per_blob), "upstream_blob_gets": sum(per_blob),
        "upstream_gets_per_blob": collections.Counter(per_blob),
        "upstream_gets_per_blob_mean": round(sum(per_blob) / max(1, len(per_blob)), 3),
        "upstream_whole_gets_per_blob": collections.Counter(per_blob_whole),
        "upstream_blob_gets_during": during,
        "actions": tally.actions,
        "critical_log_lines": critical,
    }
    text = json.dumps(report, indent=2, default=str, sort_keys=True)
    print(text)
    if report_path:
        with open(report_path, "w") as f:
            f.write(text + "\n")
    assert tally.requests > 0
    assert tally.wrong_digest_bytes == 0 and tally.wrong_digest == 0, report
    assert partial == 0, report
