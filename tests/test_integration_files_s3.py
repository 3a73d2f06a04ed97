"""
Files on the S3 backend (issue 21), against a real radosgw and a Debian
repository made by C{dpkg-deb} and C{apt-ftparchive}, served by nginx
behind a counting hop: a file fetched once is copied into the bucket's
C{files/} area, whole and checked; a second node with an empty disk
serves it from there with no upstream request; and a package whose bytes
do not match the repository's index, or a transfer cut short, never
reaches the bucket.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocicache._files._key import file_key
from ocitest import http_request, wait_for
from ocitest.ceph import Radosgw
from ocitest.daemon import Daemon, start_node
from ocitest.hop import Hop
from ocitest.packages import DebRepository, Nginx
from ocitest.s3 import Store
from test_integration_files import _partial

pytestmark = pytest.mark.integration

DEB = "pool/main/hello_1.0_all.deb"
PACKAGES = "dists/stable/main/binary-amd64/Packages"


class Remote:
    """A Debian repository and a plain file (C{files/big.bin}) behind nginx and a counting hop."""

    def __init__(self, tmp: Path) -> None:
        self.repo = DebRepository(tmp / "repo")
        self.repo.add("hello", "1.0")
        self.repo.publish()
        (self.repo.root / "files").mkdir()
        self.big = os.urandom(12 << 20)
        (self.repo.root / "files" / "big.bin").write_bytes(self.big)
        self.nginx = Nginx(self.repo.root, tmp / "nginx").start()
        self.hop = Hop(self.nginx.url).start()

    def tables(self, mutable_ttl: float = 300.0) -> str:
        """The C{[[files]]} tables of a node: C{debian} (kind deb) and C{plain} (its C{latest/} mutable)."""
        return (f'\n[[files]]\nname = "debian"\nurl = "{self.hop.url}"\nkind = "deb"\n'
                f'mutable_ttl = "{mutable_ttl}s"\n'
                f'[[files]]\nname = "plain"\nurl = "{self.hop.url}/files"\nmutable = ["latest/.*"]\n'
                f'mutable_ttl = "{mutable_ttl}s"\n')

    def gets(self, path: str, status: int | None = None) -> int:
        """The GETs of C{/path} the remote answered (with C{status})."""
        return sum(1 for request in self.hop.matching("GET", status=status) if request.target == "/" + path)

    def stop(self) -> None:
        self.hop.stop()
        self.nginx.stop()


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    served = Remote(tmp_path / "remote")
    yield served
    served.stop()


@pytest.fixture
def store(radosgw: Radosgw, bucket_name: str, tmp_path: Path) -> Store:
    return Store(radosgw, bucket_name, str(tmp_path / "keys"))


@pytest.fixture
def node(tmp_path: Path, remote: Remote, store: Store) -> Iterator[Callable[[str], Daemon]]:
    """Starts a node named C{name} on the test's bucket, with a disk of its own."""
    started: list[Daemon] = []

    def start(name: str) -> Daemon:
        daemon = start_node(tmp_path, name, {"storage": store.table}, remote.tables())
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def file_object(remote_name: str, path: str) -> str:
    """The bucket key of an immutable file: its key's hash under the C{files/} area."""
    return f"oci/files/sha256/{file_key(remote_name, path).encoded}"


def file_objects(store: Store) -> list[str]:
    return [key for key in store.objects() if key.startswith("oci/files/")]


def get(daemon: Daemon, remote_name: str, path: str) -> tuple[int, bytes]:
    status, _, body = http_request(f"{daemon.url}/files/{remote_name}/{path}", timeout=60)
    return status, body


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_file_lands_in_the_bucket_and_a_second_node_serves_it_without_the_remote(
        node: Callable[[str], Daemon], remote: Remote, store: Store) -> None:
    first = node("a")
    assert get(first, "plain", "big.bin") == (200, remote.big)
    deb = (remote.repo.root / DEB).read_bytes()
    assert get(first, "debian", PACKAGES)[0] == 200  # the index that lists the package's SHA256
    assert get(first, "debian", DEB) == (200, deb)
    big, package = file_object("plain", "big.bin"), file_object("debian", DEB)
    wait_for(lambda: {big, package} <= set(file_objects(store)), timeout=30, what="the files in the bucket")
    assert store.uploads() == []
    # Only whole, checked bytes became objects.
    assert store.sha256(big) == sha256(remote.big)
    assert store.sha256(package) == sha256(deb)
    assert [key for key in store.objects() if "/blobs/" in key] == []

    second = node("b")
    assert get(second, "plain", "big.bin") == (200, remote.big)
    assert get(second, "debian", DEB) == (200, deb)
    assert remote.gets("files/big.bin") == 1
    assert remote.gets(DEB) == 1


def test_a_corrupted_package_never_reaches_the_bucket(
        node: Callable[[str], Daemon], remote: Remote, store: Store) -> None:
    daemon = node("a")
    assert get(daemon, "debian", PACKAGES)[0] == 200
    path = remote.repo.root / DEB
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))
    status, length, received = _partial(f"{daemon.url}/files/debian/{DEB}")
    assert status == 200 and length == len(good) and received < len(good)
    # A plain file cut short by the remote: its length does not hold.
    remote.hop.fail_mid_stream(1 << 20, path_contains="big.bin")
    status, length, received = _partial(f"{daemon.url}/files/plain/big.bin")
    assert status == 200 and length == len(remote.big) and received < len(remote.big)
    wait_for(lambda: store.uploads() == [], timeout=30, what="the refused uploads aborted")
    time.sleep(1)
    assert file_object("debian", DEB) not in file_objects(store)
    assert file_object("plain", "big.bin") not in file_objects(store)
    # Once the remote has the right bytes, they are fetched again and the bucket gets them.
    path.write_bytes(good)
    assert get(daemon, "debian", DEB) == (200, good)
    assert get(daemon, "plain", "big.bin") == (200, remote.big)
    wait_for(lambda: {file_object("debian", DEB), file_object("plain", "big.bin")} <= set(file_objects(store)),
             timeout=30, what="the files in the bucket")
    assert store.sha256(file_object("debian", DEB)) == sha256(good)
    assert store.sha256(file_object("plain", "big.bin")) == sha256(remote.big)
    assert remote.gets(DEB) == 2 and remote.gets("files/big.bin") == 2
