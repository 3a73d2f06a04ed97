"""
One budget for everything the store keeps (issues 20 and 21), end to end:
blobs pulled from a real distribution registry, git clones of a repository
served by C{git http-backend} behind lighttpd, and files served by nginx,
all through one daemon under twistd whose small C{[cache] max_size} bounds
their sum, evicting the oldest entries of any kind to make room.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocitest import SRC_ROOT, free_port, wait_for
from ocitest.daemon import Daemon, config_text, default_upstreams
from ocitest.gitserver import GitServer, git
from ocitest.hop import Hop
from ocitest.images import MEDIA, Blob, MiB, big_layer
from ocitest.packages import Nginx
from ocitest.registry import Registry, push_blob

pytestmark = pytest.mark.integration

MAX_SIZE = 7 * MiB
REPO = "ocitest-budget"
GIT_HOST = "git.example"
GIT_REPO = "big/app.git"
PART = 2 * MiB
"""The size of each blob and file; the git repository's pack is about as big."""

KINDS = ("blobs", "git", "git-mirrors", "files")
"""The store's directories whose bytes count in the budget."""


@pytest.fixture(scope="module")
def blobs(upstream: Registry) -> list[Blob]:
    made = [big_layer(f"budget/{n}", PART, MEDIA.OCI_LAYER) for n in range(3)]
    for blob in made:
        push_blob(upstream.url, f"library/{REPO}", blob)
    return made


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    server = GitServer(str(tmp_path_factory.mktemp("gitserver"))).start()
    # Three commits of 700,000 random bytes: a pack of about 2 MiB.
    server.create(GIT_REPO, commits=3, size=700_000)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, dict[str, bytes]]]:
    root = tmp_path_factory.mktemp("files")
    bodies = {f"part{n}.bin": os.urandom(PART) for n in range(3)}
    (root / "files").mkdir()
    for name, body in bodies.items():
        (root / "files" / name).write_bytes(body)
    nginx = Nginx(root, root / "nginx").start()
    yield nginx, bodies
    nginx.stop()


@pytest.fixture
def daemon(tmp_path: Path, hop: Hop, git_server: GitServer,
           files: tuple[Nginx, dict[str, bytes]], request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """
    A daemon with registry upstreams, a git upstream and a file remote, in
    MAX_SIZE bytes; parametrized with C{{"tables": ..., "git": ...}}, more
    tables and more keys of the git upstream.
    """
    extra = getattr(request, "param", {})
    port = free_port()
    text = config_text(port=port, cache_dir=str(tmp_path / "cache"), upstreams=default_upstreams(hop.url),
                       max_size=f"{MAX_SIZE // MiB}MiB", extra_tables=extra.get("tables"))
    git_keys = "".join(f'{key} = "{value}"\n' for key, value in extra.get("git", {}).items())
    text += (f'\n[[git]]\nname = "{GIT_HOST}"\nurl = "http://127.0.0.1:{git_server.port}/repos"\n{git_keys}'
             f'\n[[files]]\nname = "plain"\nurl = "{files[0].url}/files"\n')
    path = tmp_path / "ocicache.toml"
    path.write_text(text)
    daemon = Daemon(str(path), port=port, workdir=str(tmp_path / "daemon"), cache_dir=str(tmp_path / "cache"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _stored(daemon: Daemon) -> dict[str, dict[str, int]]:
    """The files of each kind in the store (name to size)."""
    found: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        found[kind] = {}
        for top, _, names in os.walk(os.path.join(daemon.cache_dir, kind)):
            for name in names:
                try:
                    found[kind][os.path.join(top, name)] = os.path.getsize(os.path.join(top, name))
                except FileNotFoundError:
                    pass  # replaced meanwhile (git renames a mirror's refs into place): not there now
    return found


def _blob_names(daemon: Daemon) -> set[str]:
    return {os.path.basename(path) for path in _stored(daemon)["blobs"]}


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        body: bytes = response.read()
        return body


def _pull(daemon: Daemon, blob: Blob) -> None:
    """One blob through the registry path, byte-correct, then committed to the store."""
    body = _get(f"{daemon.url}/v2/{REPO}/blobs/{blob.digest}")
    assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest and len(body) == blob.size
    wait_for(lambda: blob.hex in _blob_names(daemon), timeout=20, what=f"blob {blob.hex[:12]} kept")
    _within(daemon)


def _clone(daemon: Daemon, git_server: GitServer, into: Path) -> None:
    """One clone through /git/, of the upstream's head, then its response committed to the store."""
    git("clone", "-q", f"{daemon.url}/git/{GIT_HOST}/{GIT_REPO}", str(into), cwd=str(into.parent))
    assert git("rev-parse", "HEAD", cwd=str(into)).stdout.strip() == git_server.head(GIT_REPO)
    git("fsck", "--strict", cwd=str(into))
    wait_for(lambda: _git_kept(daemon), timeout=20, what="the clone's response kept")
    _within(daemon)


def _git_kept(daemon: Daemon) -> bool:
    """Whether the store holds the clone's pack response (the only git entry near PART bytes)."""
    return any(size > PART // 2 for size in _stored(daemon)["git"].values())


def _download(daemon: Daemon, name: str, body: bytes) -> None:
    """One file through /files/, byte-correct, then committed to the store."""
    assert _get(f"{daemon.url}/files/plain/{name}") == body
    wait_for(lambda: _file_kept(daemon, body), timeout=20, what=f"{name} kept")
    _within(daemon)


def _file_kept(daemon: Daemon, body: bytes) -> bool:
    """Whether the store holds a file of exactly these bytes."""
    return any(size == len(body) and Path(path).read_bytes() == body for path, size in _stored(daemon)["files"].items())


def _budget(daemon: Daemon) -> dict[str, Any]:
    """What C{ocicache stats --json} says of the budget."""
    env = dict(os.environ, PYTHONPATH=SRC_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    stats = subprocess.run([sys.executable, "-m", "ocicache", "stats", "--json", "--config", daemon.config_path],
                           capture_output=True, text=True, env=env, timeout=120)
    assert stats.returncode == 0, stats.stderr
    budget: dict[str, Any] = json.loads(stats.stdout)["budget"]
    return budget


def _within(daemon: Daemon) -> None:
    """The store's bytes of every kind, summed, are within max_size."""
    stored = _stored(daemon)
    total = sum(sum(sizes.values()) for sizes in stored.values())
    assert total <= MAX_SIZE, {kind: sum(sizes.values()) for kind, sizes in stored.items()}


def test_git_and_files_evict_the_oldest_blobs(daemon: Daemon, blobs: list[Blob], git_server: GitServer,
                                              files: tuple[Nginx, dict[str, bytes]], tmp_path: Path) -> None:
    for blob in blobs:
        _pull(daemon, blob)
    assert _blob_names(daemon) == {blob.hex for blob in blobs}
    # 6 MiB of blobs, then a 2 MiB clone: over 7 MiB, so the oldest blob goes.
    _clone(daemon, git_server, tmp_path / "one")
    assert _git_kept(daemon)
    assert _blob_names(daemon) == {blobs[1].hex, blobs[2].hex}
    # Then a 2 MiB file: the next oldest blob goes.
    _, bodies = files
    _download(daemon, "part0.bin", bodies["part0.bin"])
    assert _blob_names(daemon) == {blobs[2].hex}
    assert _git_kept(daemon)
    # ocicache stats: one budget, and what each kind holds of it.
    stored = {kind: sum(sizes.values()) for kind, sizes in _stored(daemon).items()}
    expected = {"blob": stored["blobs"], "git": stored["git"] + stored["git-mirrors"], "files": stored["files"]}
    wait_for(lambda: _budget(daemon)["bytes"] == expected, timeout=10, what="the stats of every kind")
    budget = _budget(daemon)
    assert budget["max_size_bytes"] == MAX_SIZE and budget["used_bytes"] == sum(expected.values()) <= MAX_SIZE
    # Everything is still served whole: from the store, or fetched again.
    _clone(daemon, git_server, tmp_path / "two")
    for blob in blobs:
        body = _get(f"{daemon.url}/v2/{REPO}/blobs/{blob.digest}")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
        _within(daemon)
    assert _get(f"{daemon.url}/files/plain/part0.bin") == bodies["part0.bin"]
    _within(daemon)


def test_blobs_evict_the_oldest_git_responses_and_files(daemon: Daemon, blobs: list[Blob], git_server: GitServer,
                                                        files: tuple[Nginx, dict[str, bytes]],
                                                        tmp_path: Path) -> None:
    _, bodies = files
    _clone(daemon, git_server, tmp_path / "one")
    _download(daemon, "part0.bin", bodies["part0.bin"])
    _download(daemon, "part1.bin", bodies["part1.bin"])
    assert _git_kept(daemon)
    # 6 MiB of git and files, then a 2 MiB blob: the clone's response, oldest, goes.
    _pull(daemon, blobs[0])
    assert not _git_kept(daemon)
    assert _file_kept(daemon, bodies["part0.bin"]) and _file_kept(daemon, bodies["part1.bin"])
    # The next blob: the oldest file goes.
    _pull(daemon, blobs[1])
    assert not _file_kept(daemon, bodies["part0.bin"]) and _file_kept(daemon, bodies["part1.bin"])
    assert _blob_names(daemon) == {blobs[0].hex, blobs[1].hex}
    # Everything is still served whole: from the store, or fetched again.
    for name in ("part0.bin", "part1.bin"):
        assert _get(f"{daemon.url}/files/plain/{name}") == bodies[name]
        _within(daemon)
    _clone(daemon, git_server, tmp_path / "two")
    for blob in blobs[:2]:
        body = _get(f"{daemon.url}/v2/{REPO}/blobs/{blob.digest}")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
        _within(daemon)


@pytest.mark.parametrize("daemon", [{"tables": {"files_cache": {"max_size": "1MiB"}}}], indirect=True)
def test_the_files_own_max_size_is_accepted_and_ignored_with_a_warning(
        daemon: Daemon, files: tuple[Nginx, dict[str, bytes]]) -> None:
    _, bodies = files
    # A 2 MiB file is kept: the files are bounded by [cache] max_size alone.
    _download(daemon, "part0.bin", bodies["part0.bin"])
    with open(daemon.log_path) as log:
        warned = [line for line in log if "[files_cache] max_size is deprecated and ignored" in line]
    assert len(warned) == 1, warned


def _mirror_files(daemon: Daemon) -> list[str]:
    return list(_stored(daemon)["git-mirrors"])


@pytest.mark.parametrize("daemon", [{"git": {"mode": "mirror"}}], indirect=True)
def test_a_git_mirror_is_evicted_as_a_whole_for_blobs(daemon: Daemon, blobs: list[Blob], upstream: Registry,
                                                      git_server: GitServer, tmp_path: Path) -> None:
    big = big_layer("budget/big", 5 * MiB, MEDIA.OCI_LAYER)
    push_blob(upstream.url, f"library/{REPO}", big)
    into = tmp_path / "one"
    git("clone", "-q", f"{daemon.url}/git/{GIT_HOST}/{GIT_REPO}", str(into), cwd=str(tmp_path))
    assert git("rev-parse", "HEAD", cwd=str(into)).stdout.strip() == git_server.head(GIT_REPO)
    assert sum(_stored(daemon)["git-mirrors"].values()) > PART // 2
    _within(daemon)
    # The mirror (about 2 MiB, read once, so promoted past probation),
    # a 2 MiB blob, then a 5 MiB one: the room it needs takes the blob
    # on probation and then the mirror, every file of it.
    _pull(daemon, blobs[0])
    _pull(daemon, big)
    assert _mirror_files(daemon) == []
    assert _blob_names(daemon) == {big.hex}
    # A clone fetches the mirror again, whole, making room among the blobs.
    again = tmp_path / "two"
    git("clone", "-q", f"{daemon.url}/git/{GIT_HOST}/{GIT_REPO}", str(again), cwd=str(tmp_path))
    assert git("rev-parse", "HEAD", cwd=str(again)).stdout.strip() == git_server.head(GIT_REPO)
    git("fsck", "--strict", cwd=str(again))
    _within(daemon)
    assert _mirror_files(daemon) != [] and _blob_names(daemon) == set()
    _pull(daemon, blobs[0])
