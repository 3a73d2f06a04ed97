"""
Git repositories through ocicache, against real git: C{git} clients, and
an upstream served by C{git http-backend} behind lighttpd
(L{ocitest.gitserver}), with a counting, fault-injecting hop between the
daemon and it.  A private repository sits behind Basic auth.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ocicache._git._pktline import PackResponseCheck
from ocitest import SRC_ROOT, free_port, http_request
from ocitest.daemon import Daemon, config_text
from ocitest.gitserver import PASSWORD, USER, GitServer, git
from ocitest.hop import Hop

pytestmark = pytest.mark.integration

HOST = "git.example"
PACK = 1000
"""Response bytes above which an upload-pack response carries a pack (ls-refs answers are a few hundred)."""


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    server = GitServer(str(tmp_path_factory.mktemp("gitserver"))).start()
    server.create("public/app.git")
    server.create("private/secret.git")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def git_hop_server(git_server: GitServer) -> Iterator[Hop]:
    hop = Hop(f"http://127.0.0.1:{git_server.port}").start()
    yield hop
    hop.stop()


@pytest.fixture
def git_hop(git_hop_server: Hop) -> Hop:
    git_hop_server.reset()
    return git_hop_server


class Mirror(Daemon):
    """The daemon, with the port of its operator listener (metrics)."""

    metrics_port = 0


@pytest.fixture
def mirror(tmp_path: Any, git_hop: Hop) -> Iterator[Callable[..., Mirror]]:
    started: list[Mirror] = []

    def start(**git_extra: object) -> Mirror:
        port = free_port()
        lines = [f'name = "{HOST}"', f'url = "{git_hop.url}/repos"']
        lines += [f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}"
                  for key, value in git_extra.items()]
        metrics_port = free_port()
        text = config_text(port=port, cache_dir=str(tmp_path / "cache"), upstreams=[],
                           extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
        text += "\n[[git]]\n" + "\n".join(lines) + "\n"
        path = tmp_path / "ocicache.toml"
        path.write_text(text)
        daemon = Mirror(str(path), port=port, workdir=str(tmp_path / "daemon"))
        daemon.metrics_port = metrics_port
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def pack_requests(hop: Hop) -> list[Any]:
    return [r for r in hop.requests if r.method == "POST" and r.path.endswith("/git-upload-pack")
            and r.bytes_sent > PACK]


def url_of(daemon: Daemon, repo: str, credentials: tuple[str, str] | None = None) -> str:
    auth = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
    return f"http://{auth}127.0.0.1:{daemon.port}/git/{HOST}/{repo}"


def clone(daemon: Daemon, repo: str, into: str, *options: str, check: bool = True,
          credentials: tuple[str, str] | None = None, version: int = 2) -> Any:
    return git("-c", f"protocol.version={version}", "clone", *options, url_of(daemon, repo, credentials), into,
               cwd=os.path.dirname(into), check=check)


def stored_responses(daemon: Daemon) -> list[str]:
    found = []
    for top, _, files in os.walk(os.path.join(daemon.cache_dir, "git")):
        found += [os.path.join(top, name) for name in files]
    return found


def test_a_second_clone_is_served_from_the_cache(mirror: Callable[..., Mirror], git_hop: Hop,
                                                 git_server: GitServer, tmp_path: Any) -> None:
    daemon = mirror()
    clone(daemon, "public/app.git", str(tmp_path / "one"))
    assert len(pack_requests(git_hop)) == 1
    clone(daemon, "public/app.git", str(tmp_path / "two"))
    # The refs went upstream again (never stale); the pack did not.
    assert git_hop.count("GET", "/repos/public/app.git/info/refs") == 2
    assert len(pack_requests(git_hop)) == 1
    head = git_server.head("public/app.git")
    for name in ("one", "two"):
        assert git("rev-parse", "HEAD", cwd=str(tmp_path / name)).stdout.strip() == head
        git("fsck", "--full", cwd=str(tmp_path / name))
    assert len(stored_responses(daemon)) == 1
    status, _, _ = http_request(f"{daemon.url}/git/{HOST}/public/app.git/info/refs")
    assert status == 400  # no service=: dumb HTTP is not served
    # The operator sees them: ocicache stats, and the metrics.
    env = dict(os.environ, PYTHONPATH=SRC_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    stats = subprocess.run([sys.executable, "-m", "ocicache", "stats", "--json", "--config", daemon.config_path],
                           capture_output=True, text=True, env=env, timeout=120)
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    kept = os.path.getsize(stored_responses(daemon)[0])
    assert data["entries"]["git"] == 1 and data["bytes"]["git"] == kept
    scraped = http_request(f"http://127.0.0.1:{daemon.metrics_port}/metrics")[2].decode()
    assert f'ocicache_git_requests_total{{endpoint="git-upload-pack",result="hit",upstream="{HOST}"}} 1.0' in scraped
    assert f'ocicache_git_requests_total{{endpoint="git-upload-pack",result="miss",upstream="{HOST}"}} 1.0' in scraped
    assert f'ocicache_git_bytes_saved_total{{upstream="{HOST}"}} {float(kept)}' in scraped
    assert "ocicache_git_entries 1.0" in scraped and f"ocicache_git_size_bytes {float(kept)}" in scraped


def test_concurrent_clones_cost_one_upstream_pack(mirror: Callable[..., Mirror], git_hop: Hop,
                                                  tmp_path: Any) -> None:
    daemon = mirror()
    git_hop.delay = 0.3  # every upstream answer is slow: the clones overlap
    results: list[int] = []

    def one(index: int) -> None:
        results.append(clone(daemon, "public/app.git", str(tmp_path / f"c{index}"), check=False).returncode)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [0] * 6
    assert len(pack_requests(git_hop)) == 1


@pytest.mark.parametrize("options", [("--depth", "1"), ("--filter=blob:none",)], ids=["shallow", "partial"])
def test_shallow_and_partial_clones(mirror: Callable[..., Mirror], git_hop: Hop, git_server: GitServer,
                                    tmp_path: Any, options: tuple[str, ...]) -> None:
    daemon = mirror()
    posts = []
    for name in ("one", "two"):
        clone(daemon, "public/app.git", str(tmp_path / name), *options)
        assert git("rev-parse", "HEAD", cwd=str(tmp_path / name)).stdout.strip() == git_server.head("public/app.git")
        git("fsck", cwd=str(tmp_path / name))
        posts.append(git_hop.count("POST", "git-upload-pack"))
    if options[0] == "--depth":
        assert git("rev-list", "--count", "HEAD", cwd=str(tmp_path / "two")).stdout.strip() == "1"
    # The second clone asked the upstream only for its refs (v2 ls-refs):
    # the commits (and, for the partial clone, the blobs fetched on
    # checkout) came from the cache.
    assert posts[1] - posts[0] == 1
    assert len(pack_requests(git_hop)) >= 1


@pytest.mark.parametrize("version", [0, 2])
def test_a_fetch_after_a_new_upstream_commit_brings_it(mirror: Callable[..., Mirror], git_hop: Hop,
                                                       git_server: GitServer, tmp_path: Any, version: int) -> None:
    daemon = mirror()
    work = str(tmp_path / "work")
    clone(daemon, "public/app.git", work, version=version)
    new = git_server.commit("public/app.git", f"new commit v{version}")
    git("-c", f"protocol.version={version}", "fetch", "origin", cwd=work)
    assert git("rev-parse", "origin/main", cwd=work).stdout.strip() == new
    clone(daemon, "public/app.git", str(tmp_path / "again"), version=version)
    assert git("rev-parse", "HEAD", cwd=str(tmp_path / "again")).stdout.strip() == new


def test_protocol_v0_clones_are_kept_too(mirror: Callable[..., Mirror], git_hop: Hop, tmp_path: Any) -> None:
    daemon = mirror()
    clone(daemon, "public/app.git", str(tmp_path / "one"), version=0)
    clone(daemon, "public/app.git", str(tmp_path / "two"), version=0)
    assert len(pack_requests(git_hop)) == 1
    assert not any("git-protocol" in {k.lower() for k in r.headers} for r in git_hop.requests
                   if r.method == "GET")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _want_body(head: str) -> bytes:
    def pkt(line: str) -> bytes:
        return b"%04x" % (len(line) + 4) + line.encode()

    return pkt(f"want {head} side-band-64k ofs-delta\n") + b"0000" + pkt("done\n")


def test_a_private_repository_needs_the_upstreams_yes(mirror: Callable[..., Mirror], git_hop: Hop,
                                                      git_server: GitServer, tmp_path: Any) -> None:
    daemon = mirror()
    clone(daemon, "private/secret.git", str(tmp_path / "right"), credentials=(USER, PASSWORD))
    wrong = clone(daemon, "private/secret.git", str(tmp_path / "wrong"), credentials=(USER, "nope"), check=False)
    assert wrong.returncode != 0 and not os.path.exists(tmp_path / "wrong" / ".git" / "objects" / "pack")
    none = clone(daemon, "private/secret.git", str(tmp_path / "none"), check=False)
    assert none.returncode != 0
    # The same upload-pack request, cached by a client with access, is
    # not served to one without: the upstream is asked first.
    url = f"{daemon.url}/git/{HOST}/private/secret.git/git-upload-pack"
    body = _want_body(git_server.head("private/secret.git"))
    headers = {"Content-Type": "application/x-git-upload-pack-request"}
    status, _, first = http_request(url, "POST", {**headers, "Authorization": _basic(USER, PASSWORD)}, body)
    assert status == 200 and b"PACK" in first
    packs = len(pack_requests(git_hop))
    for authorization in (_basic(USER, "nope"), None):
        extra = {"Authorization": authorization} if authorization else {}
        status, answer_headers, answer = http_request(url, "POST", {**headers, **extra}, body)
        assert status == 401 and b"PACK" not in answer
        assert answer_headers["www-authenticate"].startswith("Basic")
    status, _, again = http_request(url, "POST", {**headers, "Authorization": _basic(USER, PASSWORD)}, body)
    assert status == 200 and again == first
    assert len(pack_requests(git_hop)) == packs  # served from the cache


def test_push_is_refused_before_the_upstream(mirror: Callable[..., Mirror], git_hop: Hop, tmp_path: Any) -> None:
    daemon = mirror()
    work = str(tmp_path / "work")
    clone(daemon, "public/app.git", work)
    (tmp_path / "work" / "pushed.txt").write_text("no")
    git("add", "pushed.txt", cwd=work)
    git("commit", "-q", "-m", "a push", cwd=work)
    pushed = git("push", "origin", "HEAD:main", cwd=work, check=False)
    assert pushed.returncode != 0
    assert "read-only git mirror" in pushed.stderr
    assert git_hop.count(path_contains="receive-pack") == 0
    status, _, body = http_request(f"{daemon.url}/git/{HOST}/public/app.git/git-receive-pack", "POST")
    assert status == 403 and b"read-only git mirror" in body


def test_unconfigured_hosts_and_bad_paths_fetch_nothing(mirror: Callable[..., Mirror], git_hop: Hop) -> None:
    daemon = mirror()
    refs = "info/refs?service=git-upload-pack"
    for path, expected in [
        (f"/git/github.com/owner/repo.git/{refs}", 404),
        (f"/git/{HOST}/../secret.git/{refs}", 400),
        (f"/git/{HOST}/a/%2e%2e/b.git/{refs}", 400),
        (f"/git/{HOST}/.hidden.git/{refs}", 400),
        (f"/git/{HOST}/public/app.git/info/refs?service=git-upload-archive", 400),
        (f"/git/{HOST}/public/app.git/info/refs?service=git-receive-pack", 403),
    ]:
        status, headers, body = http_request(daemon.url + path)
        assert status == expected, (path, status, body)
        assert headers["content-type"].startswith("text/plain")
    assert git_hop.requests == []


def test_a_pack_cut_mid_stream_fails_the_clone_and_is_not_kept(mirror: Callable[..., Mirror], git_hop: Hop,
                                                               tmp_path: Any) -> None:
    daemon = mirror()
    git_hop.fail_mid_stream(20000, path_contains="git-upload-pack", method="POST", times=None)
    # Only the pack response is long enough to be cut: ls-refs passes.
    cut = clone(daemon, "public/app.git", str(tmp_path / "cut"), check=False)
    assert cut.returncode != 0
    assert stored_responses(daemon) == []
    git_hop.reset()
    clone(daemon, "public/app.git", str(tmp_path / "whole"))
    git("fsck", "--full", cwd=str(tmp_path / "whole"))
    assert len(pack_requests(git_hop)) == 1  # fetched again: nothing of the cut one was kept
    assert len(stored_responses(daemon)) == 1


@pytest.mark.parametrize("version", [0, 2])
@pytest.mark.parametrize("stale", [False, True], ids=["stale-off", "stale-on"])
def test_the_upstream_down(mirror: Callable[..., Mirror], git_hop: Hop, tmp_path: Any, stale: bool,
                           version: int) -> None:
    daemon = mirror(stale_refs=stale)
    clone(daemon, "public/app.git", str(tmp_path / "before"), version=version)
    # A fetch's ref request (v2: its ls-refs) differs from a clone's: seen once while up.
    git("-c", f"protocol.version={version}", "fetch", "origin", cwd=str(tmp_path / "before"))
    git_hop.down = True
    during = clone(daemon, "public/app.git", str(tmp_path / "during"), version=version, check=False)
    if stale:
        # The last advertisement (v2: and ls-refs answer), and the kept
        # pack under the access proof the clone before gave.
        assert during.returncode == 0, during.stderr
        fetched = git("-c", f"protocol.version={version}", "fetch", "origin", cwd=str(tmp_path / "before"),
                      check=False)
        assert fetched.returncode == 0, fetched.stderr
    else:
        assert during.returncode != 0
        assert "502" in during.stderr
    # Every request went to the upstream (and found it down): never a
    # stale answer without asking first.
    assert git_hop.count(path_contains="/info/refs") == 3 + (stale and 1)


def _agent(request: Any) -> str:
    return next((value for name, value in request.headers.items() if name.lower() == "user-agent"), "")


def test_mirror_mode_serves_incremental_fetches_locally(mirror: Callable[..., Mirror], git_hop: Hop,
                                                        git_server: GitServer, tmp_path: Any) -> None:
    daemon = mirror(mode="mirror")
    clone(daemon, "public/app.git", str(tmp_path / "one"))
    clone(daemon, "public/app.git", str(tmp_path / "two"), version=0)
    # The mirror's own clone is the one upstream pack request.
    mirror_packs = [r for r in pack_requests(git_hop) if "ocicache" not in _agent(r)]
    assert len(mirror_packs) == 1 and len(pack_requests(git_hop)) == 1
    new = git_server.commit("public/app.git", "for the mirror")
    before = len(git_hop.requests)
    for name in ("one", "two"):
        git("fetch", "origin", cwd=str(tmp_path / name))  # haves: never byte-identical to anything kept
        assert git("rev-parse", "origin/main", cwd=str(tmp_path / name)).stdout.strip() == new
        git("fsck", cwd=str(tmp_path / name))
    later = git_hop.requests[before:]
    # One mirror fetch for both; every client upload-pack answered locally.
    assert len([r for r in later if r.method == "POST" and "ocicache" not in _agent(r) and r.bytes_sent > PACK]) == 1
    assert [r for r in later if r.method == "POST" and "ocicache" in _agent(r) and r.bytes_sent > PACK] == []
    scraped = http_request(f"http://127.0.0.1:{daemon.metrics_port}/metrics")[2].decode()
    assert f'ocicache_git_requests_total{{endpoint="git-upload-pack",result="mirror",upstream="{HOST}"}}' in scraped
    assert stored_responses(daemon) == []
    # The mirror is one entry of the store's books, of its directory's size.
    mirrors = os.path.join(daemon.cache_dir, "git-mirrors")
    on_disk = sum(os.lstat(os.path.join(top, name)).st_size for top, _, names in os.walk(mirrors) for name in names)
    assert "ocicache_git_entries 1.0" in scraped
    size = float(next(line.split()[1] for line in scraped.splitlines() if line.startswith("ocicache_git_size_bytes")))
    assert 0.5 * on_disk < size <= on_disk


def test_mirror_mode_falls_back_to_the_upstream_for_what_it_cannot_have(
        mirror: Callable[..., Mirror], git_hop: Hop, git_server: GitServer) -> None:
    daemon = mirror(mode="mirror")
    url = f"{daemon.url}/git/{HOST}/public/app.git/git-upload-pack"
    headers = {"Content-Type": "application/x-git-upload-pack-request"}
    # Not our ref: the mirror fetched once, then the upstream said so
    # itself; its error is no pack, so the transfer fails, and nothing is kept.
    with pytest.raises(OSError):
        http_request(url, "POST", headers, _want_body("f" * 40))
    agents = [_agent(r) for r in git_hop.requests if r.method == "POST"]
    assert len([agent for agent in agents if "ocicache" in agent]) == 1
    assert len([agent for agent in agents if "ocicache" not in agent]) >= 1  # the mirror's clone
    assert stored_responses(daemon) == []


def test_identical_ref_requests_share_one_upstream_request(mirror: Callable[..., Mirror], git_hop: Hop) -> None:
    daemon = mirror()
    git_hop.delay = 0.5  # every upstream answer is slow: the requests overlap
    url = f"{daemon.url}/git/{HOST}/private/secret.git/info/refs?service=git-upload-pack"
    answers: list[tuple[int, bytes]] = []

    def ask(authorization: str) -> None:
        status, _, body = http_request(url, headers={"Authorization": authorization})
        answers.append((status, body))

    right, other = _basic(USER, PASSWORD), _basic(USER, "nope")
    threads = [threading.Thread(target=ask, args=(right,)) for _ in range(6)]
    threads.append(threading.Thread(target=ask, args=(other,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(status for status, _ in answers) == [200] * 6 + [401]
    assert len({body for status, body in answers if status == 200}) == 1
    # One for the six with the same credentials, one for the other: never shared across credentials.
    assert git_hop.count("GET", "/info/refs") == 2


def test_a_mirror_larger_than_max_size_is_not_kept(mirror: Callable[..., Mirror], git_hop: Hop,
                                                   git_server: GitServer, tmp_path: Any) -> None:
    if not os.path.isdir(os.path.join(git_server.root, "public/big.git")):
        git_server.create("public/big.git", commits=1, size=3 << 20)
    daemon = mirror(mode="mirror")
    # max_size is the [cache] table's: set on the daemon's config by hand.
    daemon.stop()
    text = open(daemon.config_path).read().replace("[cache]\n", '[cache]\nmax_size = "2MiB"\n', 1)
    with open(daemon.config_path, "w") as f:
        f.write(text)
    daemon.start()
    clone(daemon, "public/big.git", str(tmp_path / "big"))
    git("fsck", cwd=str(tmp_path / "big"))
    mirrors = os.path.join(daemon.cache_dir, "git-mirrors")
    assert [names for _, _, names in os.walk(mirrors) if names] == []
    # Served by the upstream instead, and kept as a response only if it fits (it does not).
    assert len([r for r in pack_requests(git_hop) if "ocicache" in _agent(r)]) == 1
    assert stored_responses(daemon) == []


def test_a_kept_response_corrupt_at_rest_is_never_sent_whole(mirror: Callable[..., Mirror], git_hop: Hop,
                                                             tmp_path: Any) -> None:
    # Without sendfile (as over TLS) a kept response is checked as it is read.
    daemon = mirror()
    daemon.stop()
    text = open(daemon.config_path).read().replace("[server]\n", "[server]\nsendfile = false\n", 1)
    with open(daemon.config_path, "w") as f:
        f.write(text)
    daemon.start()
    clone(daemon, "public/app.git", str(tmp_path / "one"))
    (stored,) = stored_responses(daemon)
    with open(stored, "r+b") as f:
        f.seek(os.path.getsize(stored) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    # The corrupt copy is cut one byte short and taken out of the store;
    # git's client retries its request (a miss now) or fails: either way
    # it never takes the corrupt response as whole.
    again = clone(daemon, "public/app.git", str(tmp_path / "two"), check=False)
    if again.returncode == 0:
        git("fsck", "--full", cwd=str(tmp_path / "two"))
    clone(daemon, "public/app.git", str(tmp_path / "three"))
    git("fsck", "--full", cwd=str(tmp_path / "three"))
    # Fetched once more (by the retry, or by the next clone), then kept again.
    assert len(pack_requests(git_hop)) == 2
    scraped = http_request(f"http://127.0.0.1:{daemon.metrics_port}/metrics")[2].decode()
    assert 'code="499",method="other",route="git-upload-pack"} 1.0' in scraped
    (kept,) = stored_responses(daemon)
    with open(kept, "rb") as f:
        check = PackResponseCheck()
        check.update(f.read())
    assert check.mismatch() is None


def _curl_post(url: str, body: bytes, *headers: str) -> tuple[int, bytes]:
    done = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--data-binary", "@-",
         "-H", "Content-Type: application/x-git-upload-pack-request", *sum((["-H", h] for h in headers), []), url],
        input=body, capture_output=True, timeout=120)
    output, _, code = done.stdout.rpartition(b"\n")
    return int(code or 0), output


def test_large_gzip_chunked_request_bodies(mirror: Callable[..., Mirror], git_hop: Hop,
                                           git_server: GitServer) -> None:
    import gzip

    daemon = mirror()
    url = f"{daemon.url}/git/{HOST}/public/app.git/git-upload-pack"
    head = git_server.head("public/app.git")

    def pkt(line: str) -> bytes:
        return b"%04x" % (len(line) + 4) + line.encode()

    haves = b"".join(pkt(f"have {os.urandom(20).hex()}\n") for _ in range(50000))
    body = pkt(f"want {head} side-band-64k ofs-delta\n") + b"0000" + haves + pkt("done\n")
    compressed = gzip.compress(body)
    assert len(compressed) > 1 << 20  # chunked by curl, as git sends large bodies
    status, answer = _curl_post(url, compressed, "Content-Encoding: gzip", "Transfer-Encoding: chunked")
    assert status == 200 and b"PACK" in answer
    # Past the bound, compressed or inflated: a 413, nothing sent upstream.
    before = git_hop.count("POST")
    bomb = gzip.compress(body + b"0" * (17 << 20))
    status, answer = _curl_post(url, bomb, "Content-Encoding: gzip")
    assert status == 413, answer
    status, _ = _curl_post(url, b"0" * (17 << 20), "Transfer-Encoding: chunked")
    assert status == 413
    assert git_hop.count("POST") == before


class _Corrupting:
    """
    A small test upstream of our own beside the real one: it passes every
    request to lighttpd, and flips one byte in the middle of each pack it
    returns, keeping the framing whole and the length right.  No real
    server sends such a response; a disk or a proxy can.
    """

    def __init__(self, target_port: int) -> None:
        import http.client
        import http.server

        self.port = free_port()
        corrupted: list[int] = []
        self.corrupted = corrupted

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                pack = data.find(b"PACK")
                if pack >= 0:
                    middle = pack + (len(data) - pack) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]
                    corrupted.append(len(data))
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_corrupt_upstream_pack_fails_every_client_and_is_not_kept(git_server: GitServer, tmp_path: Any) -> None:
    corrupting = _Corrupting(git_server.port)
    port = free_port()
    text = config_text(port=port, cache_dir=str(tmp_path / "cache"), upstreams=[])
    text += f'\n[[git]]\nname = "{HOST}"\nurl = "http://127.0.0.1:{corrupting.port}/repos"\n'
    (tmp_path / "ocicache.toml").write_text(text)
    daemon = Daemon(str(tmp_path / "ocicache.toml"), port=port, workdir=str(tmp_path / "daemon")).start()
    try:
        results: list[Any] = []
        threads = [threading.Thread(target=lambda index=index: results.append(
            clone(daemon, "public/app.git", str(tmp_path / f"c{index}"), check=False))) for index in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert corrupting.corrupted
        assert [result.returncode != 0 for result in results] == [True] * 3, [r.stderr for r in results]
        assert stored_responses(daemon) == []
    finally:
        daemon.stop()
        corrupting.stop()
