"""
One upstream fetch per key for every process on one store (issue 23):
C{[server] workers = 2}, each client sent to the worker the test chooses
(the other stopped while it is accepted), and two real daemons on the
same C{[cache] dir}; against distribution behind the counting, throttled
hop (and nginx for a C{[[files]]} remote, and a small upstream of our
own that sends the wrong bytes, which distribution never does).

Cold clients split over both processes cause one upstream GET; the
process that did not fetch streams the other's growing temp file, with
C{Range} and by C{sendfile}; when the filling process is killed with
C{SIGKILL}, the other takes the fill over and nothing partial is left;
when the fill fails, its followers fail too, with no second fetch.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon, DaemonPool, Upstream
from ocitest.hop import Hop
from ocitest.images import MEDIA, Blob
from ocitest.ops import metric_value, scrape
from ocitest.packages import Nginx
from ocitest.registry import Registry, push_blob
from ocitest.serving import LoopbackServer, send
from ocitest.workers import only, served_by, wait_ready

pytestmark = pytest.mark.integration

REPO = "library/ocitest-host-fills"
SIZE = 12 << 20


def _blob(upstream: Registry, seed: str) -> Blob:
    blob = Blob.from_bytes(random.Random(seed).randbytes(SIZE), MEDIA.OCI_LAYER)
    push_blob(upstream.url, REPO, blob)
    return blob


def _pair(daemon_factory: DaemonPool, tmp_path: Path, **config: Any) -> tuple[Daemon, Daemon]:
    """Two daemons on one store."""
    store = str(tmp_path / "store")
    return daemon_factory(cache_dir=store), daemon_factory(cache_dir=store, **config)


def _blob_url(daemon: Daemon, blob: Blob) -> str:
    return f"{daemon.url}/v2/docker.io/{REPO}/blobs/{blob.digest}"


def _partial(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A GET that keeps what arrived before the connection ended: (status, headers, body so far)."""
    host, port = url.split("/")[2].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", "/" + url.split("/", 3)[3], headers=headers or {})
        response = conn.getresponse()
        body = bytearray()
        try:
            while chunk := response.read1(1 << 16):
                body += chunk
        except (OSError, http.client.HTTPException):
            pass
        return response.status, {k.lower(): v for k, v in response.getheaders()}, bytes(body)
    finally:
        conn.close()


def _in_threads(calls: list[Callable[[], tuple[int, dict[str, str], bytes]]]
                ) -> tuple[list[threading.Thread], list[tuple[int, dict[str, str], bytes]]]:
    results: list[tuple[int, dict[str, str], bytes]] = []

    def run(call: Callable[[], tuple[int, dict[str, str], bytes]]) -> None:
        results.append(call())

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    return threads, results


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a client never finished"


def _lock_notes(store: str) -> list[dict[str, object]]:
    """The notes of the one key lock held now."""
    locks = os.path.join(store, "tmp", "locks")
    names = os.listdir(locks) if os.path.isdir(locks) else []
    if len(names) != 1:
        return []
    with open(os.path.join(locks, names[0]), "rb") as f:
        return [json.loads(line) for line in f.read().split(b"\n")[:-1]]


def _leftovers(store: str) -> list[str]:
    """Whatever is left under tmp/: temp files and lock files."""
    found = []
    for dirpath, _, files in os.walk(os.path.join(store, "tmp")):
        found += [os.path.join(dirpath, name) for name in files]
    return found


def test_cold_clients_split_over_two_processes_cause_one_upstream_get(
        upstream: Registry, daemon_factory: DaemonPool, hop: Hop, tmp_path: Path) -> None:
    blob = _blob(upstream, "host-fills-sixteen")
    a, b = _pair(daemon_factory, tmp_path)
    hop.throttle = 6 << 20  # 2 s: every client asks while the body arrives
    threads, results = _in_threads([
        (lambda daemon=daemon: http_request(_blob_url(daemon, blob), timeout=60))  # type: ignore[misc]
        for daemon in [a, b] * 8])
    _join(threads)
    assert [status for status, _, _ in results] == [200] * 16
    assert all(hashlib.sha256(body).hexdigest() == blob.hex for _, _, body in results)
    assert hop.count("GET", str(blob.digest)) == 1, hop.summary()
    # Both processes served it: the one that fetched, and the one that followed.
    results_by = {headers["ocicache-cache"] for _, headers, _ in results}
    assert "miss" in results_by and "coalesced" in results_by, results_by
    assert _leftovers(str(tmp_path / "store")) == []


def test_the_other_process_serves_a_range_and_by_sendfile_while_the_body_arrives(
        upstream: Registry, daemon_factory: DaemonPool, hop: Hop, tmp_path: Path) -> None:
    blob = _blob(upstream, "host-fills-range")
    metrics = free_port()
    a, b = _pair(daemon_factory, tmp_path,
                 extra_tables={"metrics": {"listen": f"tcp:{metrics}:interface=127.0.0.1"}})
    hop.throttle = 3 << 20  # 4 s
    first, firsts = _in_threads([lambda: http_request(_blob_url(a, blob), timeout=60)])
    wait_for(lambda: hop.bytes_sent_for(str(blob.digest)) > 1 << 20, 20, what="the fill under way")
    start, end = 5_000_000, 9_999_999
    # Both while the body arrives: a Range, and the whole blob.
    followers, followed = _in_threads([
        lambda: http_request(_blob_url(b, blob), headers={"Range": f"bytes={start}-{end}"}, timeout=60),
        lambda: http_request(_blob_url(b, blob), timeout=60)])
    _join(followers)
    ranged, whole = sorted(followed, key=lambda result: result[0], reverse=True)
    status, headers, body = ranged
    assert status == 206, body[:200]
    assert headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
    assert headers["ocicache-cache"] == "coalesced"
    assert body == blob.data[start:end + 1]
    status, headers, body = whole
    assert status == 200 and headers["ocicache-cache"] == "coalesced"
    assert hashlib.sha256(body).hexdigest() == blob.hex
    _join(first)
    assert firsts[0][0] == 200 and hashlib.sha256(firsts[0][2]).hexdigest() == blob.hex
    # Plain TCP: the follower sent its bytes from the filler's temp file by sendfile(2).
    assert metric_value(scrape(f"http://127.0.0.1:{metrics}/metrics"), "ocicache_sendfile_bytes_total") >= SIZE
    assert hop.count("GET", str(blob.digest)) == 1, hop.summary()


def test_the_filling_process_killed_mid_download_the_other_takes_over(
        upstream: Registry, daemon_factory: DaemonPool, hop: Hop, tmp_path: Path) -> None:
    blob = _blob(upstream, "host-fills-sigkill")
    store = str(tmp_path / "store")
    a, b = _pair(daemon_factory, tmp_path)
    hop.throttle = 2 << 20  # 6 s
    doomed, _ = _in_threads([lambda: _partial(_blob_url(a, blob))])
    wait_for(lambda: any("temp" in note for note in _lock_notes(store)), 20, what="the fill noted in its lock")
    # The lock file names the process that holds it.
    assert _lock_notes(store)[0]["pid"] == a.pid
    followers, results = _in_threads([lambda: _partial(_blob_url(b, blob)) for _ in range(4)])
    wait_for(lambda: hop.bytes_sent_for(str(blob.digest)) > 4 << 20, 20, what="the followers under way")
    assert a.proc is not None and a.pid is not None
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(10)
    daemon_factory.daemons.remove(a)  # killed on purpose
    _join(followers)
    _join(doomed)
    assert [status for status, _, _ in results] == [200] * 4
    assert all(hashlib.sha256(body).hexdigest() == blob.hex for _, _, body in results)
    hop.wait_idle()
    assert hop.count("GET", str(blob.digest)) == 2, hop.summary()
    # The dead fill's temp file is gone, nothing partial is kept, the lock is let go.
    wait_for(lambda: _leftovers(store) == [], 5, what=f"tmp/ emptied: {_leftovers(store)}")
    path = os.path.join(store, "blobs", "sha256", blob.hex[:2], blob.hex)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == blob.hex
    status, headers, body = http_request(_blob_url(b, blob))
    assert status == 200 and headers["ocicache-cache"] == "hit" and body == blob.data
    assert hop.count("GET", str(blob.digest)) == 2
    assert "takes the fill over" in b.log_text()


class _WrongBytes:
    """
    An upstream whose blob bodies do not hash to their digest, sent
    slowly: what distribution never does.  Counts its GETs.
    """

    def __init__(self, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self.gets = 0
        self.server = LoopbackServer(self._answer, name="wrong-bytes")

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        if "/blobs/sha256:" not in handler.path:
            send(handler, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(self.size))
        handler.end_headers()
        if handler.command != "GET":
            return
        self.gets += 1
        piece = 1 << 18
        for _ in range(self.size // piece):
            handler.wfile.write(b"\0" * piece)
            handler.wfile.flush()
            time.sleep(self.seconds * piece / self.size)


@pytest.fixture
def wrong_bytes() -> Iterator[_WrongBytes]:
    upstream = _WrongBytes(8 << 20, 3.0)
    upstream.server.start()
    yield upstream
    upstream.server.stop()


def test_a_failed_fill_fails_the_other_process_s_clients_with_one_upstream_get(
        daemon_factory: DaemonPool, wrong_bytes: _WrongBytes, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    upstreams = [Upstream("docker.io", wrong_bytes.server.url, default=True)]
    a = daemon_factory(cache_dir=store, upstreams=upstreams)
    b = daemon_factory(cache_dir=store, upstreams=upstreams)
    digest = "sha256:" + hashlib.sha256(b"what it should have been").hexdigest()
    url = f"/v2/docker.io/{REPO}/blobs/{digest}"
    filler, filled = _in_threads([lambda: _partial(a.url + url)])
    wait_for(lambda: wrong_bytes.gets == 1, 20, what="the fill under way")
    time.sleep(0.5)  # its body is arriving
    followers, followed = _in_threads([lambda: _partial(b.url + url) for _ in range(3)])
    _join(filler)
    _join(followers)
    for status, headers, body in [*filled, *followed]:
        # Cut short of its Content-Length: never a complete-looking bad blob.
        assert status == 200 and int(headers["content-length"]) == 8 << 20 and len(body) < 8 << 20
    assert wrong_bytes.gets == 1
    assert not os.path.exists(os.path.join(store, "blobs", "sha256", digest[7:9], digest[7:]))
    wait_for(lambda: _leftovers(store) == [], 5, what=f"tmp/ emptied: {_leftovers(store)}")


def test_a_file_of_a_files_remote_is_fetched_once_for_both_processes(
        daemon_factory: DaemonPool, tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "files").mkdir(parents=True)
    data = random.Random("host-fills-file").randbytes(SIZE)
    (root / "files" / "big.bin").write_bytes(data)
    nginx = Nginx(root, tmp_path / "nginx").start()
    hop = Hop(nginx.url).start()
    try:
        hop.throttle = 6 << 20
        store = str(tmp_path / "store")
        daemons = []
        for n in range(2):
            port = free_port()
            config = tmp_path / f"files{n}.toml"
            config.write_text(
                f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n[cache]\ndir = "{store}"\n'
                '[[upstream]]\nname = "docker.io"\nurl = "http://127.0.0.1:9"\n'
                f'[[files]]\nname = "plain"\nurl = "{hop.url}/files"\n')
            daemon = Daemon(str(config), port=port, workdir=str(tmp_path / f"files{n}"), cache_dir=store)
            daemon_factory.daemons.append(daemon)  # stopped with the others
            daemons.append(daemon.start())
        threads, results = _in_threads([
            (lambda daemon=daemon: http_request(f"{daemon.url}/files/plain/big.bin", timeout=60))  # type: ignore[misc]
            for daemon in daemons * 4])
        _join(threads)
        assert [status for status, _, _ in results] == [200] * 8
        assert all(body == data for _, _, body in results)
        assert hop.count("GET", "big.bin") == 1, hop.summary()
    finally:
        hop.stop()
        nginx.stop()


class _Begun:
    """A GET whose response headers came from the worker chosen; its body is read in a thread."""

    def __init__(self, url: str) -> None:
        host, port = url.split("/")[2].split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self._conn.request("GET", "/" + url.split("/", 3)[3])
        self.response = self._conn.getresponse()
        self.body = bytearray()
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.response.read1(1 << 16):
                self.body += chunk
        except (OSError, http.client.HTTPException):
            pass
        finally:
            self._conn.close()

    def join(self) -> bytes:
        self._thread.join(120)
        assert not self._thread.is_alive(), "a client never finished"
        return bytes(self.body)


def _begin_on(pids: dict[int, int], index: int, url: str) -> _Begun:
    """A GET served by worker C{index}: the other is stopped until its headers arrive."""
    with only(pids, index):
        return _Begun(url)


def test_cold_clients_spread_over_two_workers_cause_one_upstream_get(
        upstream: Registry, daemon_factory: DaemonPool, hop: Hop) -> None:
    blob = _blob(upstream, "host-fills-workers")
    daemon = daemon_factory(server_extra={"workers": 2})
    pids = wait_ready(daemon.log_text, 2)
    hop.throttle = 3 << 20  # 4 s: every client asks while the body arrives
    clients = [_begin_on(pids, index % 2, _blob_url(daemon, blob)) for index in range(16)]
    bodies = [client.join() for client in clients]
    assert [client.response.status for client in clients] == [200] * 16
    assert all(hashlib.sha256(body).hexdigest() == blob.hex for body in bodies)
    assert hop.count("GET", str(blob.digest)) == 1, hop.summary()
    path = f"/v2/docker.io/{REPO}/blobs/{blob.digest}"
    wait_for(lambda: len(served_by(daemon.log_text(), path)) == 16, 10, what="16 access events")
    assert sorted(served_by(daemon.log_text(), path)) == [0] * 8 + [1] * 8
    assert {client.response.getheader("ocicache-cache") for client in clients} == {"miss", "coalesced"}


def test_a_worker_killed_mid_download_the_other_takes_over(
        upstream: Registry, daemon_factory: DaemonPool, hop: Hop) -> None:
    blob = _blob(upstream, "host-fills-workers-sigkill")
    daemon = daemon_factory(server_extra={"workers": 2})
    assert daemon.cache_dir is not None
    store = daemon.cache_dir
    pids = wait_ready(daemon.log_text, 2)
    hop.throttle = 2 << 20  # 6 s
    doomed = _begin_on(pids, 0, _blob_url(daemon, blob))
    # The worker that holds the key's lock, as its lock file says.
    notes = _lock_notes(store)
    assert [note["pid"] for note in notes if "pid" in note] == [pids[0]]
    followers = [_begin_on(pids, 1, _blob_url(daemon, blob)) for _ in range(4)]
    assert [client.response.getheader("ocicache-cache") for client in followers] == ["coalesced"] * 4
    wait_for(lambda: hop.bytes_sent_for(str(blob.digest)) > 4 << 20, 20, what="the followers under way")
    os.kill(pids[0], signal.SIGKILL)
    bodies = [client.join() for client in followers]
    doomed.join()
    assert all(hashlib.sha256(body).hexdigest() == blob.hex for body in bodies)
    hop.wait_idle()
    assert hop.count("GET", str(blob.digest)) == 2, hop.summary()
    # Nothing partial: the dead worker's temp file gone, the lock let go, the blob whole.
    wait_for(lambda: _leftovers(store) == [], 5, what=f"tmp/ emptied: {_leftovers(store)}")
    path = os.path.join(store, "blobs", "sha256", blob.hex[:2], blob.hex)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == blob.hex
    # The supervisor started worker 0 again; the next GET is a hit, wherever it lands.
    wait_ready(daemon.log_text, 2)
    status, headers, body = http_request(_blob_url(daemon, blob))
    assert status == 200 and headers["ocicache-cache"] == "hit" and body == blob.data
    assert hop.count("GET", str(blob.digest)) == 2
