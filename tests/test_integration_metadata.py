"""
The metadata database failing honestly, end to end: the real daemon under
twistd (behind it a real docker-registry and the counting hop) and the
real C{ocicache} CLI, each as a subprocess.

  - corrupt at start-up: the daemon moves it aside, says so in one log
    line, creates a new one and keeps serving the stored files;
  - cannot be created (read-only cache directory): one line, a non-zero
    exit, nothing listening;
  - C{ocicache verify}, C{gc}, C{stats} on a corrupt or locked database:
    one line on stderr and a non-zero exit within seconds; SIGTERM and
    SIGINT end them within a second.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon, daemon_env, default_upstreams, twistd_command, write_config
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)
QUICK = 15.0
"""Seconds within which a command on a broken database must have answered."""


# --- helpers ---------------------------------------------------------------


def _db(cache_dir: str) -> str:
    return os.path.join(cache_dir, "metadata.sqlite")


def _random_bytes(path: str) -> bytes:
    data = os.urandom(64 * 1024)
    with open(path, "wb") as f:
        f.write(data)
    return data


def _garbage_pages(path: str) -> bytes:
    """Keep the header page of the real database, make every other page garbage."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    assert len(data) > 4096, "the database should span more than one page"
    data[4096:] = os.urandom(len(data) - 4096)
    with open(path, "wb") as f:
        f.write(data)
    return bytes(data)


def _aside(cache_dir: str) -> list[str]:
    return sorted(glob.glob(_db(cache_dir) + ".corrupt-*"))


def _cli(*args: str, timeout: float = QUICK + 10) -> tuple[subprocess.CompletedProcess[str], float]:
    """The real CLI, from the tree the daemon runs from (see L{daemon_env})."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ocicache", *args], capture_output=True, text=True,
                            env=daemon_env(), timeout=timeout)
    return result, time.monotonic() - started


def _cli_config(tmp_path: Path, cache_dir: str) -> str:
    path = tmp_path / "cli.toml"
    path.write_text(f'[cache]\ndir = "{cache_dir}"\n')
    return str(path)


def _one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ocicache: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _twistd_once(config_path: str, cwd: str, timeout: float = 30.0) -> tuple[int | None, str, str]:
    """
    Run the daemon and wait for it to exit by itself; C{None} as the status
    when it was still running (and had to be killed) after C{timeout}.
    """
    proc = subprocess.Popen(twistd_command(config_path), cwd=cwd, env=daemon_env(), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return None, stdout, stderr


_LOCKER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive":
    # Nobody else may even read (rollback-journal style EXCLUSIVE lock).
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("BEGIN EXCLUSIVE")
else:
    # An open write transaction: in WAL mode readers go on, writers wait.
    db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO tags VALUES ('u', 'r', 't', 'sha256:' || hex(randomblob(32)), 0)")
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Callable[[str, str], None]]:
    """
    C{locked(db_path, "exclusive" | "write")}: another process holds the
    database until the test ends.
    """
    lockers: list[subprocess.Popen[str]] = []

    def lock(path: str, mode: str) -> None:
        proc = subprocess.Popen([sys.executable, "-c", _LOCKER, path, mode], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lockers.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read() if proc.stderr else ""

    yield lock
    for proc in lockers:
        proc.kill()
        proc.wait(10)


def _fresh_cache(tmp_path: Path) -> tuple[str, str]:
    """A cache directory with a healthy, empty database; returns (cache, config)."""
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    config = _cli_config(tmp_path, cache)
    result, _ = _cli("stats", "--config", config)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(_db(cache))
    return cache, config


# --- the daemon ------------------------------------------------------------


@pytest.mark.parametrize("corrupt", [_random_bytes, _garbage_pages], ids=["random-bytes", "garbage-pages"])
def test_a_corrupt_database_is_moved_aside_and_the_stored_files_are_served(
    daemon_factory: Callable[..., Daemon], ocitest_images: dict[str, Image], hop: Hop,
    corrupt: Callable[[str], bytes],
) -> None:
    image = ocitest_images["oci"]
    tag_url = f"{{}}/v2/{image.repo}/manifests/{image.tag}"
    first = daemon_factory()
    cache = first.cache_dir
    status, _, body = http_request(tag_url.format(first.url), headers={"Accept": ACCEPT})
    assert (status, body) == (200, image.manifest_bytes)
    for blob in image.all_blobs():
        status, _, body = http_request(f"{first.url}/v2/{image.repo}/blobs/{blob.digest}")
        assert (status, body) == (200, blob.data)
    blob_files = [os.path.join(cache, "blobs", "sha256", b.hex[:2], b.hex) for b in image.all_blobs()]
    wait_for(lambda: all(os.path.exists(p) for p in blob_files), timeout=30, what="the blobs stored")
    first.stop()

    broken = corrupt(_db(cache))
    hop.reset()
    second = daemon_factory(cache_dir=cache)
    log = second.log_text()
    said = [line for line in log.splitlines() if "metadata" in line.lower() and "corrupt" in line.lower()]
    assert len(said) == 1, log
    aside = _aside(cache)
    assert aside and os.path.basename(aside[0]).startswith("metadata.sqlite.corrupt-")
    assert aside[0] in said[0]
    with open(aside[0], "rb") as f:
        assert f.read() == broken
    assert os.path.exists(_db(cache))

    # By digest: the stored file, its media type from its own mediaType.
    status, headers, body = http_request(f"{second.url}/v2/{image.repo}/manifests/{image.manifest_digest}",
                                         headers={"Accept": ACCEPT})
    assert (status, body) == (200, image.manifest_bytes)
    assert headers["content-type"] == image.manifest_media_type
    assert hop.count("GET", "/manifests/") == 0, hop.summary()
    # The tag is resolved upstream again (one GET, a miss), then served.
    for _ in range(2):
        status, headers, body = http_request(tag_url.format(second.url), headers={"Accept": ACCEPT})
        assert (status, body) == (200, image.manifest_bytes)
        assert headers["docker-content-digest"] == image.manifest_digest
        assert headers["content-type"] == image.manifest_media_type
    assert hop.count("GET", "/manifests/") == 1, hop.summary()
    # The blobs come from the stored files: the files are the truth.
    for blob in image.all_blobs():
        status, _, body = http_request(f"{second.url}/v2/{image.repo}/blobs/{blob.digest}")
        assert (status, body) == (200, blob.data)
    assert hop.count("GET", "/blobs/") == 0, hop.summary()

    # The janitor's recovery adopted the stored blobs into the new database.
    def adopted() -> int:
        db = sqlite3.connect(f"file:{_db(cache)}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM blobs").fetchone()[0])
        finally:
            db.close()

    wait_for(lambda: adopted() == len(image.all_blobs()), timeout=30, what="the blobs adopted")
    log = second.log_text()
    assert "Traceback" not in log and "AssertionError" not in log, log
    second.stop()
    result, _ = _cli("verify", "--config", second.config_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """
    A tmpfs under C{tmp_path} and a function that remounts it read-only
    (a plain read-only directory does not stop root).
    """
    mount = tmp_path / "ro"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to make read-only: {result.stderr.strip()}")

    def read_only() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        with pytest.raises(OSError):
            (mount / "probe").write_text("x")

    try:
        yield mount, read_only
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _assert_refused_to_start(tmp_path: Path, config: str, port: int, *fragments: str) -> None:
    status, stdout, stderr = _twistd_once(config, str(tmp_path))
    assert status is not None, f"the daemon did not exit\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    assert status != 0
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ocicache: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert "starting on" not in stdout, stdout  # no listener was ever bound
    assert lines[0].removeprefix("ocicache: ") not in stdout, "said twice: the log is stdout here"
    assert not _listening(port)


def test_a_read_only_cache_at_start_is_one_line_and_no_listener(
    read_only_dir: tuple[Path, Callable[[], None]], tmp_path: Path, hop: Hop,
) -> None:
    mount, read_only = read_only_dir
    cache = str(mount / "cache")
    port = free_port()
    config = write_config(str(tmp_path / "ocicache.toml"), port=port, cache_dir=cache,
                          upstreams=default_upstreams(hop.url))
    # A cache that was in use (its directories and database exist) ...
    daemon = Daemon(config, port=port, workdir=str(tmp_path / "first")).start()
    daemon.stop()
    assert os.path.exists(_db(cache))
    # ... on a filesystem that is now read-only.
    read_only()
    _assert_refused_to_start(tmp_path, config, port, _db(cache))


def test_daemonized_the_parent_says_why_and_exits_non_zero(
    read_only_dir: tuple[Path, Callable[[], None]], tmp_path: Path, hop: Hop,
) -> None:
    """
    Without C{-n}, twistd's parent waits for the daemon's word on a pipe:
    it gets the reason, and the log file has it once.
    """
    mount, read_only = read_only_dir
    cache = str(mount / "cache")
    port = free_port()
    config = write_config(str(tmp_path / "ocicache.toml"), port=port, cache_dir=cache,
                          upstreams=default_upstreams(hop.url))
    Daemon(config, port=port, workdir=str(tmp_path / "first")).start().stop()
    read_only()
    log, pidfile = tmp_path / "twistd.log", tmp_path / "twistd.pid"
    command = twistd_command(config)
    command[command.index("-n")] = f"--logfile={log}"
    command[command.index("--pidfile=")] = f"--pidfile={pidfile}"
    try:
        result = subprocess.run(command, cwd=str(tmp_path), env=daemon_env(), capture_output=True, text=True,
                                timeout=30)
    finally:
        if pidfile.exists() and _listening(port):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert result.returncode != 0, result.stderr
    # The parent prints at most 98 bytes of it: the end, with the reason.
    assert "metadata.sqlite: Read-only file system" in result.stderr, result.stderr
    text = log.read_text()
    assert text.count("Read-only file system") == 1, text
    assert "Traceback" not in text
    assert "starting on" not in text
    assert not _listening(port)


def test_a_cache_directory_that_cannot_be_created_is_one_line_and_no_listener(
    read_only_dir: tuple[Path, Callable[[], None]], tmp_path: Path, hop: Hop,
) -> None:
    mount, read_only = read_only_dir
    read_only()
    cache = str(mount / "cache")
    port = free_port()
    config = write_config(str(tmp_path / "ocicache.toml"), port=port, cache_dir=cache,
                          upstreams=default_upstreams(hop.url))
    _assert_refused_to_start(tmp_path, config, port, cache, "Read-only file system")


def test_a_database_locked_by_another_process_at_start_is_one_line_and_no_listener(
    tmp_path: Path, hop: Hop, locked: Callable[[str, str], None],
) -> None:
    cache, _ = _fresh_cache(tmp_path)
    locked(_db(cache), "exclusive")
    port = free_port()
    config = write_config(str(tmp_path / "ocicache.toml"), port=port, cache_dir=cache,
                          upstreams=default_upstreams(hop.url))
    _assert_refused_to_start(tmp_path, config, port, _db(cache), "locked")
    assert _aside(cache) == []


# --- the CLI ---------------------------------------------------------------


@pytest.mark.parametrize("command", [["verify"], ["gc"], ["stats"], ["stats", "--json"]])
def test_the_cli_on_a_corrupt_database_says_so_in_one_line(tmp_path: Path, command: list[str]) -> None:
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    broken = _random_bytes(_db(cache))
    result, took = _cli(*command, "--config", _cli_config(tmp_path, cache))
    assert took < QUICK
    _one_line(result, _db(cache), "corrupt")
    with open(_db(cache), "rb") as f:
        assert f.read() == broken, "only --repair may touch it"
    assert _aside(cache) == []


def test_verify_repair_rebuilds_a_corrupt_database(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    broken = _random_bytes(_db(cache))
    config = _cli_config(tmp_path, cache)
    result, took = _cli("verify", "--repair", "--config", config)
    assert took < QUICK
    assert result.returncode == 1, result.stdout + result.stderr  # something was wrong, and is repaired
    assert "Traceback" not in result.stdout + result.stderr
    aside = _aside(cache)
    assert len(aside) == 1
    with open(aside[0], "rb") as f:
        assert f.read() == broken
    assert aside[0] in result.stdout
    result, _ = _cli("verify", "--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 corrupt, 0 missing" in result.stdout


@pytest.mark.parametrize("command", [["verify"], ["gc"], ["stats"]])
def test_the_cli_on_an_exclusively_locked_database_says_so_in_one_line(
    tmp_path: Path, locked: Callable[[str, str], None], command: list[str],
) -> None:
    cache, config = _fresh_cache(tmp_path)
    locked(_db(cache), "exclusive")
    result, took = _cli(*command, "--config", config)
    assert took < QUICK
    _one_line(result, _db(cache), "locked")
    assert _aside(cache) == []


def test_with_a_write_transaction_open_elsewhere_verify_reads_and_gc_says_locked(
    tmp_path: Path, locked: Callable[[str, str], None],
) -> None:
    cache, config = _fresh_cache(tmp_path)
    locked(_db(cache), "write")
    result, took = _cli("verify", "--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified 0 files: 0 corrupt, 0 missing" in result.stdout
    result, took = _cli("gc", "--config", config)
    assert took < QUICK
    _one_line(result, _db(cache), "locked")


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_a_verify_waiting_on_a_lock_within_a_second(
    tmp_path: Path, locked: Callable[[str, str], None], signum: int,
) -> None:
    cache, config = _fresh_cache(tmp_path)
    locked(_db(cache), "exclusive")
    proc = subprocess.Popen([sys.executable, "-m", "ocicache", "verify", "--config", config], env=daemon_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Its database thread is started: it is waiting on SQLite's lock now.
        wait_for(lambda: _threads(proc.pid) >= 2 or proc.poll() is not None, timeout=20,
                 what="verify's database thread")
        time.sleep(0.5)
        assert proc.poll() is None, "verify ended before the signal"
        sent = time.monotonic()
        proc.send_signal(signum)
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pytest.fail(f"verify still ran 1 s after {signal.Signals(signum).name}")
        assert time.monotonic() - sent <= 1.0
        stdout, stderr = proc.communicate(timeout=5)
        assert proc.returncode != 0
        assert "Traceback" not in stdout + stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
