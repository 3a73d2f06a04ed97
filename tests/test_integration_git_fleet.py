"""
Git responses in a fleet, against real git clients, C{git http-backend}
behind lighttpd with a counting hop, a real redis-server and (on the S3
backend) a real radosgw: a burst of identical clones spread over three
nodes costs one upstream pack request; the other nodes stream the
response from the filling node, or from the bucket once it is complete.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ocitest import wait_for
from ocitest.ceph import Radosgw
from ocitest.daemon import Daemon
from ocitest.fleet_nodes import FleetNodes
from ocitest.gitserver import GitServer, git
from ocitest.hop import Hop
from ocitest.redis import RedisServer
from ocitest.s3 import Store
from test_integration_git import HOST, clone, pack_requests
from test_integration_git_s3 import git_objects

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = "public/app.git"
SECRET = "fleet-secret-for-git-tests"


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    server = GitServer(str(tmp_path_factory.mktemp("gitserver"))).start()
    server.create(REPO)
    yield server
    server.stop()


@pytest.fixture
def git_hop(git_server: GitServer) -> Iterator[Hop]:
    hop = Hop(f"http://127.0.0.1:{git_server.port}").start()
    yield hop
    hop.stop()


@pytest.fixture
def fleet(tmp_path: Any, git_hop: Hop, redis_server: RedisServer) -> Iterator[Callable[..., list[Daemon]]]:
    """Starts C{count} nodes on one Redis, each with a disk of its own; C{storage}: their [storage] table."""
    git = f'\n[[git]]\nname = "{HOST}"\nurl = "{git_hop.url}/repos"\n'
    nodes = FleetNodes(tmp_path, redis_server.url, SECRET, lambda index: git)
    yield nodes.start
    nodes.stop_all()


def _log(daemon: Daemon) -> str:
    path = os.path.join(daemon.workdir, "ocicache.log")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _burst(nodes: list[Daemon], tmp_path: Any, per_node: int) -> list[int]:
    """Identical clones, C{per_node} through each node at once; their exit codes."""
    results: list[int] = []

    def one(daemon: Daemon, name: str) -> None:
        results.append(clone(daemon, REPO, str(tmp_path / name), check=False).returncode)

    threads = [threading.Thread(target=one, args=(daemon, f"n{index}c{n}"))
               for index, daemon in enumerate(nodes) for n in range(per_node)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return results


def _check_clones(tmp_path: Any, git_server: GitServer, nodes: int, per_node: int) -> None:
    head = git_server.head(REPO)
    for index in range(nodes):
        for n in range(per_node):
            where = str(tmp_path / f"n{index}c{n}")
            assert git("rev-parse", "HEAD", cwd=where).stdout.strip() == head
            git("fsck", "--full", cwd=where)


def test_a_burst_of_clones_over_three_nodes_costs_one_upstream_pack(
        fleet: Callable[..., list[Daemon]], git_hop: Hop, git_server: GitServer, tmp_path: Any) -> None:
    nodes = fleet(3)
    git_hop.delay = 0.5  # every upstream answer is slow: the clones overlap
    assert _burst(nodes, tmp_path, 2) == [0] * 6
    assert len(pack_requests(git_hop)) == 1
    _check_clones(tmp_path, git_server, 3, 2)


def test_on_one_bucket_the_nodes_share_the_fill_and_the_object(
        fleet: Callable[..., list[Daemon]], git_hop: Hop, git_server: GitServer, tmp_path: Any,
        radosgw: Radosgw, bucket_name: str) -> None:
    store = Store(radosgw, bucket_name, str(tmp_path / "keys"))
    nodes = fleet(3, {**store.table, "local_max_size": 0})
    git_hop.delay = 0.5
    assert _burst(nodes, tmp_path, 2) == [0] * 6
    assert len(pack_requests(git_hop)) == 1
    _check_clones(tmp_path, git_server, 3, 2)
    wait_for(lambda: len(git_objects(store)) == 1, timeout=30, what="the response in the bucket")
    assert store.uploads() == []
