"""
Files in a fleet (issue 21), against three real daemons, a real
redis-server, a real radosgw (on the S3 backend) and a Debian repository
served by nginx behind a counting hop: a burst of cold GETs of one file
spread over the nodes costs one upstream GET, the other nodes streaming
it from the filling node; and a mutable file one node fetched or
revalidated is fresh for the others within the remote's TTL, so a burst
after the TTL costs one conditional GET across the nodes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocitest import wait_for
from ocitest.ceph import Radosgw
from ocitest.daemon import Daemon
from ocitest.fleet_nodes import FleetNodes
from ocitest.redis import RedisServer
from ocitest.s3 import Store
from test_integration_files_s3 import Remote, file_object, file_objects, get

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

SECRET = "fleet-secret-for-files-tests"
TTL = 3.0
RELEASE = "dists/stable/Release"


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    served = Remote(tmp_path / "remote")
    yield served
    served.stop()


@pytest.fixture
def fleet(tmp_path: Path, remote: Remote, redis_server: RedisServer) -> Iterator[Callable[..., list[Daemon]]]:
    """Starts C{count} nodes on one Redis, each with a disk of its own; C{storage}: their [storage] table."""
    nodes = FleetNodes(tmp_path, redis_server.url, SECRET, lambda index: remote.tables(mutable_ttl=TTL))
    yield nodes.start
    nodes.stop_all()


def _burst(nodes: list[Daemon], remote_name: str, path: str, per_node: int) -> list[tuple[int, bytes]]:
    """GETs of one file, C{per_node} through each node at once: their statuses and bodies."""
    results: list[tuple[int, bytes]] = []

    def one(daemon: Daemon) -> None:
        results.append(get(daemon, remote_name, path))

    threads = [threading.Thread(target=one, args=(daemon,)) for daemon in nodes for _ in range(per_node)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_a_burst_over_three_nodes_costs_one_upstream_get_and_the_others_stream_from_the_filler(
        fleet: Callable[..., list[Daemon]], remote: Remote) -> None:
    nodes = fleet(3)
    remote.hop.throttle = 4 << 20  # 3 s for the file: the GETs overlap
    assert _burst(nodes, "plain", "big.bin", 3) == [(200, remote.big)] * 9
    # No bucket here: the other nodes had it from the filling node.
    assert remote.gets("files/big.bin") == 1


def test_on_one_bucket_the_nodes_share_the_fill_and_the_object(
        fleet: Callable[..., list[Daemon]], remote: Remote, radosgw: Radosgw, bucket_name: str,
        tmp_path: Path) -> None:
    store = Store(radosgw, bucket_name, str(tmp_path / "keys"))
    nodes = fleet(3, store.table)
    remote.hop.throttle = 4 << 20
    assert _burst(nodes, "plain", "big.bin", 2) == [(200, remote.big)] * 6
    assert remote.gets("files/big.bin") == 1
    wait_for(lambda: file_object("plain", "big.bin") in file_objects(store), timeout=30,
             what="the file in the bucket")
    assert store.uploads() == []


def test_a_mutable_file_revalidated_by_one_node_is_fresh_for_all(
        fleet: Callable[..., list[Daemon]], remote: Remote, radosgw: Radosgw, bucket_name: str,
        tmp_path: Path) -> None:
    store = Store(radosgw, bucket_name, str(tmp_path / "keys"))
    nodes = fleet(3, store.table)
    release = (remote.repo.root / RELEASE).read_bytes()
    assert get(nodes[0], "debian", RELEASE) == (200, release)
    # The others, within the TTL: the first node's version, no request to the remote.
    assert [get(daemon, "debian", RELEASE) for daemon in nodes[1:]] == [(200, release)] * 2
    assert remote.gets(RELEASE) == 1
    time.sleep(TTL + 0.5)
    # Past the TTL, a burst over every node: one conditional GET, a 304.
    assert _burst(nodes, "debian", RELEASE, 3) == [(200, release)] * 9
    assert remote.gets(RELEASE) == 2 and remote.gets(RELEASE, status=304) == 1
    assert [get(daemon, "debian", RELEASE) for daemon in nodes] == [(200, release)] * 3
    assert remote.gets(RELEASE) == 2

    # A new version upstream: fetched by one node after the TTL, then served by all.
    remote.repo.add("hello", "2.0")
    remote.repo.publish()
    newer = (remote.repo.root / RELEASE).read_bytes()
    assert newer != release
    time.sleep(TTL + 0.5)
    assert get(nodes[1], "debian", RELEASE) == (200, newer)
    assert remote.gets(RELEASE) == 3 and remote.gets(RELEASE, status=200) == 2
    assert [get(daemon, "debian", RELEASE) for daemon in (nodes[0], nodes[2])] == [(200, newer)] * 2
    assert remote.gets(RELEASE) == 3


def test_a_new_version_of_a_mutable_file_is_fetched_once_and_streamed_to_the_other_nodes(
        fleet: Callable[..., list[Daemon]], remote: Remote) -> None:
    nodes = fleet(3)  # no bucket: the other nodes have each version from the node fetching it
    latest = remote.repo.root / "files" / "latest"
    latest.mkdir()
    first, second = os.urandom(12 << 20), os.urandom(12 << 20)
    (latest / "big.bin").write_bytes(first)
    remote.hop.throttle = 4 << 20  # 3 s for each version: the GETs overlap
    assert _burst(nodes, "plain", "latest/big.bin", 2) == [(200, first)] * 6
    assert remote.gets("files/latest/big.bin") == 1
    (latest / "big.bin").write_bytes(second)
    time.sleep(TTL + 0.5)
    assert _burst(nodes, "plain", "latest/big.bin", 2) == [(200, second)] * 6
    # One conditional GET, answered with the new version, streamed to every node as it arrived.
    assert remote.gets("files/latest/big.bin") == 2 and remote.gets("files/latest/big.bin", status=200) == 2
