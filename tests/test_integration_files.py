"""
Package repositories and plain files through ocicache (issue 21), against
real software on loopback: a Debian repository made by C{dpkg-deb} and
C{apt-ftparchive}, served by nginx behind a counting hop, and C{apt-get}
pointed at C{/files/debian} with a private configuration.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from ocitest import SRC_ROOT, free_port, http_request, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.ops import htpasswd_line
from ocitest.packages import Apt, DebRepository, Dnf, Nginx, RpmRepository

pytestmark = pytest.mark.integration

TTL = 2.0


class World:
    def __init__(self, tmp: Path, extra: str = "", cache: str = "") -> None:
        self.tmp = tmp
        self.repo = DebRepository(tmp / "repo")
        self.repo.add("hello", "1.0")
        self.repo.add("big", "1.0", payload_size=8 << 20)
        self.repo.publish()
        self.rpm = RpmRepository(tmp / "repo" / "rpm")
        self.rpm.add("hello", "1.0")
        self.rpm.publish()
        self.apk = tmp / "repo" / "alpine" / "main" / "x86_64"
        self.apk.mkdir(parents=True)
        (self.apk / "APKINDEX.tar.gz").write_bytes(b"index one")
        (self.apk / "hello-1.0-r0.apk").write_bytes(b"package one")
        (self.repo.root / "files").mkdir()
        self.big = os.urandom(24 << 20)
        (self.repo.root / "files" / "big.bin").write_bytes(self.big)
        self.nginx = Nginx(self.repo.root, tmp / "nginx").start()
        self.hop = Hop(self.nginx.url).start()
        port = free_port()
        config = tmp / "ocicache.toml"
        config.write_text(
            f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
            f'[cache]\ndir = "{tmp / "cache"}"\n{cache}'
            '[[upstream]]\nname = "docker.io"\nurl = "http://127.0.0.1:9"\n'
            f'[[files]]\nname = "debian"\nurl = "{self.hop.url}"\nkind = "deb"\nmutable_ttl = "{TTL}s"\n'
            f'negative_ttl = "30s"\n'
            f'[[files]]\nname = "plain"\nurl = "{self.hop.url}/files"\n'
            f'[[files]]\nname = "rpms"\nurl = "{self.hop.url}/rpm"\nkind = "rpm"\nmutable_ttl = "{TTL}s"\n'
            f'[[files]]\nname = "alpine"\nurl = "{self.hop.url}/alpine"\nkind = "apk"\nmutable_ttl = "{TTL}s"\n'
            + extra)
        try:
            self.daemon = Daemon(str(config), port=port, workdir=str(tmp)).start()
        except BaseException:
            self.hop.stop()
            self.nginx.stop()
            raise
        self.url = f"{self.daemon.url}/files/debian"

    def stop(self) -> None:
        self.daemon.stop()
        self.hop.stop()
        self.nginx.stop()

    def apt(self, name: str) -> Apt:
        return Apt(self.tmp / name, self.url)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.stop()


def _partial(url: str) -> tuple[int, int, int]:
    """GET C{url}: the status, the announced length, and how many bytes came before the connection ended."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        length = int(response.getheader("content-length", "-1"))
        received = 0
        try:
            while chunk := response.read1(65536):
                received += len(chunk)
        except (OSError, http.client.HTTPException):
            pass
        return response.status, length, received
    finally:
        conn.close()


def _ocicache(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator command on the daemon's configuration."""
    env = dict(os.environ, PYTHONPATH=SRC_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ocicache", *args, "--config", world.daemon.config_path],
                          capture_output=True, text=True, env=env, timeout=120)


def _stats(world: World) -> dict[str, Any]:
    """What C{ocicache stats --json} says of the files."""
    files: dict[str, Any] = json.loads(_ocicache(world, "stats", "--json").stdout)["files"]
    return files


def _exactly(hop: Hop, path: str) -> int:
    return sum(1 for request in hop.matching("GET") if request.target == path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_apt_installs_through_ocicache_and_a_second_client_costs_no_package_fetch(world: World) -> None:
    first = world.apt("apt1")
    first.run("update")
    first.run("install", "--download-only", "-y", "hello")
    deb = first.archives / "hello_1.0_all.deb"
    assert _sha256(deb) == _sha256(world.repo.root / "pool/main/hello_1.0_all.deb")
    second = world.apt("apt2")
    second.run("update")
    second.run("install", "--download-only", "-y", "hello")
    assert _sha256(second.archives / "hello_1.0_all.deb") == _sha256(deb)
    assert world.hop.count("GET", "/pool/main/hello_1.0_all.deb") == 1
    # Within the TTL, the index was not asked for again either.
    assert _exactly(world.hop, "/dists/stable/Release") == 1
    assert _exactly(world.hop, "/dists/stable/InRelease") == 1  # its 404, remembered
    wait_for(lambda: _stats(world)["entries"] == 3, timeout=10)  # committed after the last byte went out
    kept = ("dists/stable/Release", "dists/stable/main/binary-amd64/Packages.gz", "pool/main/hello_1.0_all.deb")
    assert _stats(world)["bytes"] == sum((world.repo.root / path).stat().st_size for path in kept)
    # Named by their remote and path, not their content: ocicache verify leaves them be.
    verify = _ocicache(world, "verify", "--repair")
    assert verify.returncode == 0 and "0 corrupt" in verify.stdout, verify.stdout
    assert _stats(world)["entries"] == 3
    assert http_request(f"{world.url}/pool/main/hello_1.0_all.deb")[2] == deb.read_bytes()
    assert world.hop.count("GET", "/pool/main/hello_1.0_all.deb") == 1


def test_a_new_version_published_upstream_arrives_after_the_ttl(world: World) -> None:
    apt = world.apt("apt")
    apt.run("update")
    world.repo.add("hello", "2.0")
    world.repo.publish()
    apt.run("update")
    shown = apt.run("install", "--download-only", "-y", "--print-uris", "hello").stdout
    assert "hello_1.0" in shown  # still fresh: the stored index
    time.sleep(TTL + 0.5)
    apt.run("update")
    apt.run("install", "--download-only", "-y", "hello")
    assert (apt.archives / "hello_2.0_all.deb").exists()
    # Revalidated with conditional GETs: an unchanged file came back 304.
    assert world.hop.count("GET", "/dists/stable/Release", status=304) >= 1 or \
        world.hop.count("GET", "/dists/stable/InRelease", status=404) >= 1


def test_a_corrupted_package_is_not_kept_and_the_client_fails(world: World) -> None:
    apt = world.apt("apt")
    apt.run("update")  # the cache now holds the Packages index listing hello's SHA256
    deb = world.repo.root / "pool/main/hello_1.0_all.deb"
    good = deb.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    deb.write_bytes(bytes(bad))
    status, length, received = _partial(f"{world.url}/pool/main/hello_1.0_all.deb")
    # Cut short of its Content-Length: the last byte was held back.
    assert status == 200 and length == len(good) and received < len(good)
    failed = apt.run("install", "--download-only", "-y", "hello", check=False)
    assert failed.returncode != 0
    assert not (apt.archives / "hello_1.0_all.deb").exists()
    # Never kept: once the upstream has the right bytes, they are fetched again and served.
    deb.write_bytes(good)
    before = world.hop.count("GET", "/pool/main/hello_1.0_all.deb")
    apt.run("install", "--download-only", "-y", "hello")
    assert world.hop.count("GET", "/pool/main/hello_1.0_all.deb") == before + 1
    assert (apt.archives / "hello_1.0_all.deb").read_bytes() == good


def test_with_the_upstream_down_the_stale_index_and_its_packages_are_served(world: World) -> None:
    apt = world.apt("apt")
    apt.run("update")
    apt.run("install", "--download-only", "-y", "hello")
    time.sleep(TTL + 0.5)
    world.hop.down = True
    other = world.apt("other")
    other.run("update")
    other.run("install", "--download-only", "-y", "hello")
    assert _sha256(other.archives / "hello_1.0_all.deb") == _sha256(world.repo.root / "pool/main/hello_1.0_all.deb")
    status, headers, _ = http_request(f"{world.url}/dists/stable/main/binary-amd64/Packages.gz")
    assert status == 200 and headers.get("ocicache-cache") == "stale" and "110" in headers.get("warning", "")


def test_concurrent_clients_cost_one_upstream_request_per_file(world: World) -> None:
    results: list[tuple[int, bytes]] = []

    def fetch() -> None:
        status, _, body = http_request(f"{world.daemon.url}/files/plain/big.bin", timeout=60)
        results.append((status, body))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [200] * 8
    assert all(body == world.big for _, body in results)
    assert world.hop.count("GET", "/files/big.bin") == 1
    # And concurrent apt clients: one request per package.
    clients = [world.apt(f"apt{n}") for n in range(4)]
    for apt in clients:
        apt.run("update")
    runs = [threading.Thread(target=apt.run, args=("install", "--download-only", "-y", "big")) for apt in clients]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    for apt in clients:
        assert (apt.archives / "big_1.0_all.deb").exists()
    assert world.hop.count("GET", "/pool/main/big_1.0_all.deb") == 1


def test_a_range_request_on_an_index_does_not_corrupt_it(world: World) -> None:
    whole = (world.repo.root / "dists/stable/main/binary-amd64/Packages").read_bytes()
    url = f"{world.url}/dists/stable/main/binary-amd64/Packages"
    status, headers, body = http_request(url, headers={"Range": "bytes=10-19"})
    assert status == 206 and body == whole[10:20]
    status, _, body = http_request(url)
    assert status == 200 and body == whole
    status, headers, body = http_request(url, headers={"Range": "bytes=5-"})
    assert status == 206 and body == whole[5:] and headers["content-range"] == f"bytes 5-{len(whole) - 1}/{len(whole)}"
    apt = world.apt("apt")
    apt.run("update")
    apt.run("install", "--download-only", "-y", "hello")


@pytest.mark.parametrize("path", [
    "/files/debian/../etc/passwd", "/files/debian/%2e%2e/etc/passwd", "/files/debian/pool/..%2f..%2fetc",
    "/files/debian/pool//x", "/files/debian/pool/%00x", "/files/debian/pool/a%5cb", "/files/debian/pool/a\\b",
    "/files/debian/./pool", "/files/debian/pool/%2E%2E", "/files/debian/pool/x?y=1", "/files/debian/%ff",
])
def test_traversal_is_refused_before_any_fetch(world: World, path: str) -> None:
    status, _, _ = http_request(world.daemon.url + path)
    assert status in (400, 404)
    assert world.hop.count() == 0


def test_an_unconfigured_remote_is_404_with_no_fetch_and_404s_are_remembered(world: World) -> None:
    status, _, _ = http_request(f"{world.daemon.url}/files/nosuch/pool/x.deb")
    assert status == 404 and world.hop.count() == 0
    for _ in range(3):
        status, _, _ = http_request(f"{world.daemon.url}/files/plain/missing.bin")
        assert status == 404
    assert world.hop.count("GET", "/files/missing.bin") == 1
    # HEAD: from the store when it holds the file, else the remote's HEAD, nothing fetched.
    status, headers, body = http_request(f"{world.daemon.url}/files/plain/big.bin", method="HEAD")
    assert status == 200 and headers["content-length"] == str(len(world.big)) and body == b""
    assert world.hop.count("HEAD", "/files/big.bin") == 1 and world.hop.count("GET", "/files/big.bin") == 0
    assert http_request(f"{world.daemon.url}/files/plain/big.bin")[2] == world.big
    status, headers, _ = http_request(f"{world.daemon.url}/files/plain/big.bin", method="HEAD")
    assert status == 200 and headers["content-length"] == str(len(world.big))
    assert world.hop.count("HEAD", "/files/big.bin") == 1
    assert http_request(f"{world.daemon.url}/files/plain/missing.bin", method="HEAD")[0] == 404


def test_dnf_installs_through_ocicache_and_a_second_client_costs_no_package_fetch(world: World) -> None:
    url = f"{world.daemon.url}/files/rpms"
    first = Dnf(world.tmp / "dnf1", url)
    first.run("install", "hello")
    rpm = world.rpm.root / "Packages" / "hello-1.0-1.noarch.rpm"
    assert (first.dest / rpm.name).read_bytes() == rpm.read_bytes()
    second = Dnf(world.tmp / "dnf2", url)
    second.run("install", "hello")
    assert (second.dest / rpm.name).read_bytes() == rpm.read_bytes()
    assert world.hop.count("GET", "/rpm/Packages/hello-1.0-1.noarch.rpm") == 1
    assert world.hop.count("GET", "primary.xml") == 1


def test_a_corrupted_rpm_is_not_kept(world: World) -> None:
    rpm = world.rpm.root / "Packages" / "hello-1.0-1.noarch.rpm"
    good = rpm.read_bytes()
    bad = bytearray(good)
    bad[-100] ^= 0xFF
    rpm.write_bytes(bytes(bad))
    client = Dnf(world.tmp / "dnf", f"{world.daemon.url}/files/rpms")
    assert client.run("install", "hello", check=False).returncode != 0
    # primary.xml's checksum refused it: with the right bytes upstream, it is fetched again.
    tried = world.hop.count("GET", f"/rpm/Packages/{rpm.name}")
    rpm.write_bytes(good)
    status, _, body = http_request(f"{world.daemon.url}/files/rpms/Packages/{rpm.name}")
    assert status == 200 and body == good
    assert world.hop.count("GET", f"/rpm/Packages/{rpm.name}") == tried + 1


def test_repodata_named_by_checksum_is_verified_against_it(world: World) -> None:
    primary = next((world.rpm.root / "repodata").glob("*-primary.xml.gz"))
    good = primary.read_bytes()
    primary.write_bytes(bytes(len(good)))  # the same length, the wrong bytes
    status, length, received = _partial(f"{world.daemon.url}/files/rpms/repodata/{primary.name}")
    assert status == 200 and length == len(good) and received < len(good)
    primary.write_bytes(good)
    status, _, body = http_request(f"{world.daemon.url}/files/rpms/repodata/{primary.name}")
    assert status == 200 and body == good
    assert world.hop.count("GET", primary.name) == 2


def test_apk_index_is_revalidated_and_packages_are_kept(world: World) -> None:
    base = f"{world.daemon.url}/files/alpine/main/x86_64"
    assert http_request(f"{base}/APKINDEX.tar.gz")[2] == b"index one"
    assert http_request(f"{base}/hello-1.0-r0.apk")[2] == b"package one"
    (world.apk / "APKINDEX.tar.gz").write_bytes(b"index two")
    (world.apk / "hello-1.0-r0.apk").write_bytes(b"package changed")
    status, headers, body = http_request(f"{base}/APKINDEX.tar.gz")
    assert body == b"index one" and headers["ocicache-cache"] == "hit"
    time.sleep(TTL + 0.5)
    status, headers, body = http_request(f"{base}/APKINDEX.tar.gz")
    assert body == b"index two" and headers["ocicache-cache"] == "miss"
    # An immutable file is never asked for again.
    assert http_request(f"{base}/hello-1.0-r0.apk")[2] == b"package one"
    assert world.hop.count("GET", "hello-1.0-r0.apk") == 1
    # Unchanged after the TTL: a 304, the stored version renewed.
    time.sleep(TTL + 0.5)
    status, headers, body = http_request(f"{base}/APKINDEX.tar.gz")
    assert body == b"index two" and headers["ocicache-cache"] == "hit"
    assert world.hop.count("GET", "APKINDEX.tar.gz", status=304) == 1
    # Past the TTL, many clients at once: one conditional GET upstream for all of them.
    (world.apk / "APKINDEX.tar.gz").write_bytes(b"index three")
    time.sleep(TTL + 0.5)
    asked = world.hop.count("GET", "APKINDEX.tar.gz")
    bodies: list[bytes] = []
    clients = [threading.Thread(target=lambda: bodies.append(http_request(f"{base}/APKINDEX.tar.gz")[2]))
               for _ in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert bodies == [b"index three"] * 8
    assert world.hop.count("GET", "APKINDEX.tar.gz") == asked + 1
    status, headers, body = http_request(f"{base}/APKINDEX.tar.gz")
    # Joined while its commit lands, or stored.
    assert body == b"index three" and headers["ocicache-cache"] in ("coalesced", "hit")
    assert world.hop.count("GET", "APKINDEX.tar.gz") == asked + 1
    # The client's own conditional requests: answered from the store.
    etag, last_modified = headers["etag"], headers["last-modified"]
    assert http_request(f"{base}/APKINDEX.tar.gz", headers={"If-None-Match": etag})[0] == 304
    assert http_request(f"{base}/APKINDEX.tar.gz", headers={"If-Modified-Since": last_modified})[0] == 304
    assert http_request(f"{base}/APKINDEX.tar.gz", headers={"If-None-Match": '"other"'})[0] == 200
    assert http_request(f"{base}/hello-1.0-r0.apk", headers={"If-Modified-Since": last_modified})[0] == 200
    # A Range on it is served from the store, and does not change it.
    status, _, body = http_request(f"{base}/APKINDEX.tar.gz", headers={"Range": "bytes=6-"})
    assert status == 206 and body == b"three"
    assert http_request(f"{base}/APKINDEX.tar.gz")[2] == b"index three"


def test_a_restart_keeps_files_and_the_validators_of_mutable_ones(world: World) -> None:
    apt = world.apt("apt")
    apt.run("update")
    apt.run("install", "--download-only", "-y", "hello")
    wait_for(lambda: _stats(world)["entries"] == 3, timeout=10)  # committed after the last byte went out
    world.daemon.stop()
    # As after a crash between a commit and its row: the files are adopted at start-up.
    with sqlite3.connect(world.tmp / "cache" / "metadata.sqlite") as db:
        assert db.execute("DELETE FROM file_entries").rowcount == 3
    world.daemon.start()
    wait_for(lambda: _stats(world)["entries"] == 3, timeout=10)
    world.hop.reset()
    other = world.apt("other")
    other.run("update")
    other.run("install", "--download-only", "-y", "hello")
    assert world.hop.count("GET", "/pool/") == 0
    time.sleep(TTL + 0.5)
    other.run("update")
    # Revalidated with the validators kept across the restart: 304s, no body fetched again.
    assert world.hop.count("GET", "/dists/stable/Release", status=304) >= 1
    assert world.hop.count("GET", "/dists/stable/Release", status=200) == 0


def test_files_stay_within_max_size_and_show_in_the_metrics(tmp_path: Path) -> None:
    metrics_port = free_port()
    # [cache] max_size bounds the files with everything else the store keeps.
    world = World(tmp_path, f'[metrics]\nlisten = "tcp:{metrics_port}:interface=127.0.0.1"\n',
                  cache='max_size = "1MiB"\n')
    try:
        files = world.repo.root / "files"
        bodies = {f"part{n}.bin": os.urandom(400 << 10) for n in range(4)}
        for name, body in bodies.items():
            (files / name).write_bytes(body)

        def stored() -> int:
            return sum(1 for path in (tmp_path / "cache" / "files").rglob("*")
                       if path.is_file() and path.stat().st_size == 400 << 10)

        def exposition() -> str:
            return http_request(f"http://127.0.0.1:{metrics_port}/metrics")[2].decode()

        def settled(number: int) -> bool:
            return stored() == min(number + 1, 2) and \
                f"ocicache_files_evictions_total {max(number - 1, 0)}.0" in exposition()

        # One at a time, each committed (after its last byte went out) before the next.
        for number, (name, body) in enumerate(bodies.items()):
            assert http_request(f"{world.daemon.url}/files/plain/{name}")[2] == body
            wait_for(partial(settled, number), timeout=10)
        # 1 MiB holds two at most; an evicted file is fetched again, whole.
        assert http_request(f"{world.daemon.url}/files/plain/part0.bin")[2] == bodies["part0.bin"]
        assert world.hop.count("GET", "/files/part0.bin") == 2
        wait_for(lambda: "ocicache_files_evictions_total 3.0" in exposition(), timeout=10)
        text = exposition()
        assert stored() == 2
        assert 'ocicache_files_requests_total{remote="plain",result="miss"} 5.0' in text
        assert 'ocicache_files_upstream_requests_total{code="200",remote="plain"} 5.0' in text
        size = next(line for line in text.splitlines() if line.startswith("ocicache_files_size_bytes "))
        assert float(size.split()[1]) == 2 * (400 << 10)
    finally:
        world.stop()


def test_with_client_authentication_files_need_credentials_too(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", "correct horse"))
    world = World(tmp_path, f'[auth]\nhtpasswd_file = "{htpasswd}"\n')
    try:
        (world.repo.root / "files" / "a.bin").write_bytes(b"secret bytes")
        status, headers, _ = http_request(f"{world.daemon.url}/files/plain/a.bin")
        assert status == 401 and "www-authenticate" in headers
        # Before routing: which remotes exist is not told either.
        assert http_request(f"{world.daemon.url}/files/nosuch/a.bin")[0] == 401
        assert world.hop.count() == 0
        basic = "Basic " + base64.b64encode(b"alice:correct horse").decode()
        status, _, body = http_request(f"{world.daemon.url}/files/plain/a.bin", headers={"Authorization": basic})
        assert status == 200 and body == b"secret bytes"
        apt = Apt(tmp_path / "apt", world.url.replace("http://", "http://alice:correct%20horse@"))
        apt.run("update")
        apt.run("install", "--download-only", "-y", "hello")
        assert (apt.archives / "hello_1.0_all.deb").exists()
    finally:
        world.stop()


def test_apt_by_hash_indexes_are_verified_and_list_the_packages(world: World) -> None:
    world.repo.publish(by_hash=True)
    apt = world.apt("apt")
    apt.run("update")
    assert world.hop.count("GET", "/binary-amd64/by-hash/SHA512/") == 1  # apt takes the strongest
    assert world.hop.count("GET", "/binary-amd64/Packages") == 0
    # The by-hash Packages index was read: a corrupted package is not kept.
    deb = world.repo.root / "pool/main/hello_1.0_all.deb"
    good = deb.read_bytes()
    bad = bytearray(good)
    bad[-10] ^= 0xFF
    deb.write_bytes(bytes(bad))
    status, length, received = _partial(f"{world.url}/pool/main/hello_1.0_all.deb")
    assert status == 200 and length == len(good) and received < len(good)
    deb.write_bytes(good)
    apt.run("install", "--download-only", "-y", "hello")
    assert (apt.archives / "hello_1.0_all.deb").read_bytes() == good
    # A by-hash file whose bytes are not its name is not kept.
    # A by-hash file whose bytes are not its name is not kept (a SHA256 one: apt fetched none).
    hashed = next((world.repo.root / "dists/stable/main/binary-amd64/by-hash/SHA256").iterdir())
    real = hashed.read_bytes()
    hashed.write_bytes(bytes(len(real)))
    url = f"{world.url}/dists/stable/main/binary-amd64/by-hash/SHA256/{hashed.name}"
    status, length, received = _partial(url)
    assert status == 200 and length == len(real) and received < len(real)
    hashed.write_bytes(real)
    assert http_request(url)[2] == real


def test_a_transfer_cut_short_is_never_kept(world: World) -> None:
    world.hop.fail_mid_stream(5 << 20, path_contains="/files/big.bin")
    status, length, received = _partial(f"{world.daemon.url}/files/plain/big.bin")
    assert status == 200 and length == len(world.big) and received < len(world.big)
    assert http_request(f"{world.daemon.url}/files/plain/big.bin")[2] == world.big
    assert world.hop.count("GET", "/files/big.bin") == 2
    assert http_request(f"{world.daemon.url}/files/plain/big.bin")[2] == world.big
    assert world.hop.count("GET", "/files/big.bin") == 2


_ACCESS = re.compile(r"\[ocicache\.access#info\] GET (/files/\S+) (\d+) (\d+)B [0-9.]+s (\S+) (\S+) (\S+)$")


def _access_lines(world: World) -> list[tuple[str, int, int, str, str, str]]:
    """The access events of C{/files/} GETs: path, status, bytes, cache result, remote, identity."""
    lines = Path(world.daemon.log_path).read_text(errors="replace").splitlines()
    found = [_ACCESS.search(line) for line in lines]
    return [(m[1], int(m[2]), int(m[3]), m[4], m[5], m[6]) for m in found if m is not None]


def test_every_files_get_writes_one_access_event(world: World) -> None:
    url = f"{world.daemon.url}/files/plain/big.bin"
    assert http_request(url)[2] == world.big  # a miss, streamed as it arrives
    wait_for(lambda: _stats(world)["entries"] == 1, timeout=10)  # committed after the last byte went out
    assert http_request(url)[2] == world.big  # a hit, by sendfile
    status, _, body = http_request(url, headers={"Range": "bytes=10-109"})
    assert status == 206 and body == world.big[10:110]
    status, _, error = http_request(f"{world.daemon.url}/files/plain/missing.bin")
    assert status == 404 and error
    big = len(world.big)
    expected = [
        ("/files/plain/big.bin", 200, big, "miss", "plain", "-"),
        ("/files/plain/big.bin", 200, big, "hit", "plain", "-"),
        ("/files/plain/big.bin", 206, 100, "hit", "plain", "-"),
        ("/files/plain/missing.bin", 404, len(error), "-", "plain", "-"),
    ]
    wait_for(lambda: len(_access_lines(world)) >= len(expected), timeout=10, what="the access events")
    assert _access_lines(world) == expected
