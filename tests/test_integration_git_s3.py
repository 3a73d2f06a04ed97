"""
Git responses on the S3 backend, against a real radosgw, real git
clients and C{git http-backend} behind lighttpd with a counting hop: a
cold clone's response is copied into the bucket's C{git/} area and
appears there only whole and checked; a node with an empty disk serves
the same clone from the bucket with no upstream pack request; and a
corrupt object in the bucket is refused (the clone fails, the object is
deleted) and fetched again by the next clone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ocicache._git._pktline import PackResponseCheck
from ocitest import wait_for
from ocitest.ceph import Radosgw
from ocitest.daemon import Daemon, start_node
from ocitest.gitserver import GitServer, git
from ocitest.hop import Hop
from ocitest.s3 import Store
from test_integration_git import HOST, clone, pack_requests

pytestmark = pytest.mark.integration

REPO = "public/app.git"


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
def store(radosgw: Radosgw, bucket_name: str, tmp_path: Any) -> Store:
    return Store(radosgw, bucket_name, os.path.join(str(tmp_path), "keys"))


@pytest.fixture
def node(tmp_path: Any, git_hop: Hop, store: Store) -> Iterator[Callable[[str], Daemon]]:
    """Starts a node named C{name} on the test's bucket, with a disk of its own that keeps nothing."""
    started: list[Daemon] = []

    def start(name: str) -> Daemon:
        git = f'\n[[git]]\nname = "{HOST}"\nurl = "{git_hop.url}/repos"\n'
        daemon = start_node(tmp_path, name, {"storage": {**store.table, "local_max_size": 0}}, git)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def git_objects(store: Store) -> list[str]:
    return [key for key in store.objects() if key.startswith("oci/git/sha256/")]


def local_responses(daemon: Daemon) -> list[str]:
    found = []
    for top, _, files in os.walk(os.path.join(daemon.cache_dir, "git")):
        found += [os.path.join(top, name) for name in files]
    return found


def body_of(store: Store, key: str) -> bytes:
    data: bytes = store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    return data


def test_a_clone_is_shared_through_the_bucket(node: Callable[[str], Daemon], git_hop: Hop, git_server: GitServer,
                                              store: Store, tmp_path: Any) -> None:
    first = node("a")
    clone(first, REPO, str(tmp_path / "one"))
    assert len(pack_requests(git_hop)) == 1
    wait_for(lambda: len(git_objects(store)) == 1, timeout=30, what="the response completed in the bucket")
    assert store.uploads() == []
    # Only the checked, whole response is an object: its pack's trailer matches.
    check = PackResponseCheck()
    check.update(body_of(store, git_objects(store)[0]))
    assert check.mismatch() is None
    assert local_responses(first) == []  # local_max_size = 0: nothing kept on this disk
    assert [key for key in store.objects() if "/blobs/" in key] == []

    second = node("b")
    clone(second, REPO, str(tmp_path / "two"))
    assert len(pack_requests(git_hop)) == 1  # served from the bucket
    head = git_server.head(REPO)
    for name in ("one", "two"):
        assert git("rev-parse", "HEAD", cwd=str(tmp_path / name)).stdout.strip() == head
        git("fsck", "--full", cwd=str(tmp_path / name))


def test_a_corrupt_object_in_the_bucket_is_refused_and_fetched_again(
        node: Callable[[str], Daemon], git_hop: Hop, git_server: GitServer, store: Store, tmp_path: Any) -> None:
    daemon = node("a")
    clone(daemon, REPO, str(tmp_path / "one"))
    wait_for(lambda: len(git_objects(store)) == 1, timeout=30, what="the response completed in the bucket")
    [key] = git_objects(store)
    good = body_of(store, key)
    # One byte of the pack flipped (its first object's header; a byte of a
    # progress message would not matter), the length unchanged.
    middle = good.index(b"PACK") + 12
    store.client.put_object(Bucket=store.bucket, Key=key,
                            Body=good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1:])

    second = clone(daemon, REPO, str(tmp_path / "two"), check=False)
    if second.returncode == 0:
        # The daemon cut the response before its first byte, and curl
        # retried the request on a new connection: the upstream answered
        # that one.  Either way the corrupt bytes never ended cleanly.
        assert git("rev-parse", "HEAD", cwd=str(tmp_path / "two")).stdout.strip() == git_server.head(REPO)
        git("fsck", "--full", cwd=str(tmp_path / "two"))
    clone(daemon, REPO, str(tmp_path / "three"))
    # The corrupt object was deleted and the response fetched again, once.
    assert len(pack_requests(git_hop)) == 2
    assert git("rev-parse", "HEAD", cwd=str(tmp_path / "three")).stdout.strip() == git_server.head(REPO)
    git("fsck", "--full", cwd=str(tmp_path / "three"))

    def replaced() -> bool:
        if git_objects(store) != [key]:
            return False
        check = PackResponseCheck()  # a new response (its progress messages may differ), whole and checked
        check.update(body_of(store, key))
        return check.mismatch() is None

    wait_for(replaced, timeout=30, what="a whole response in the bucket again")
