"""
Test support for ocicache's integration tests and benchmarks.

Plain standard library (no pytest, no Twisted reactor), so both the pytest
suite and C{bench/run} can use it after C{sys.path.insert(0, "<repo>/tests")}:

  - L{ocitest.images}: deterministic OCI / Docker test images
  - L{ocitest.registry}: a real upstream (Debian's C{docker-registry}) and a
    plain-HTTP pusher
  - L{ocitest.hop}: a counting, fault-injecting reverse proxy
  - L{ocitest.daemon}: the real ocicache daemon under C{twistd}
  - L{ocitest.containerd}: a private containerd and C{ctr} helpers
  - L{ocitest.ops}: what the operations tests (C{test_ops_*.py}) share:
    certificates, registries with TLS or auth, a token server, C{twistd}
    with any command line, reading C{/metrics} (certificates and tokens
    need the C{cryptography} package, imported only when used)
"""

from __future__ import annotations

import errno
import http.client
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable

__all__ = [
    "REPO_ROOT",
    "SRC_ROOT",
    "MissingBinary",
    "free_port",
    "log_tail",
    "require_binary",
    "wait_for",
    "wait_for_http",
    "http_request",
    "spawn",
    "stop_process",
    "temp_files",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC_ROOT = os.path.join(REPO_ROOT, "src")
"""The source tree: C{src/ocicache} and C{src/twisted/plugins}."""


class MissingBinary(RuntimeError):
    """
    A program the tests need is not installed.
    """


# Which Debian package provides each program, for the error message.
_PACKAGES = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "containerd": "containerd",
    "ctr": "containerd",
    "wrk": "wrk",
    "redis-server": "redis-server",
    "nginx": "nginx",
    "apt-ftparchive": "apt-utils",
    "dpkg-deb": "dpkg",
    "createrepo_c": "createrepo-c",
    "dnf": "dnf",
    "rpmbuild": "rpm",
}


def require_binary(name: str) -> str:
    """
    The absolute path of program C{name}, or L{MissingBinary} saying what to
    install.
    """
    path = shutil.which(name)
    if path is None:
        package = _PACKAGES.get(name, name)
        raise MissingBinary(
            f"required program {name!r} is not on PATH; install it with "
            f"'apt-get install -y {package}'"
        )
    return path


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: str | None, lines: int = 60) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """
    One plain HTTP request, path sent exactly as given (no normalisation);
    returns (status, headers with lower-case names, body).
    """
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def wait_for_http(
    url: str,
    timeout: float = 20.0,
    expect: int | tuple[int, ...] = 200,
    proc: subprocess.Popen[bytes] | None = None,
    log: str | None = None,
    what: str = "server",
) -> None:
    """
    Poll C{url} until it answers with C{expect}; if C{proc} exits first, or
    the time runs out, raise with the tail of C{log}.
    """
    expected = (expect,) if isinstance(expect, int) else expect
    deadline = time.monotonic() + timeout
    last: str = "no answer yet"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with status {proc.returncode} before answering {url}\n"
                f"--- log tail ({log}) ---\n{log_tail(log)}"
            )
        try:
            status, _, _ = http_request(url, timeout=2.0)
            if status in expected:
                return
            last = f"HTTP {status}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
            if getattr(e, "errno", None) not in (errno.ECONNREFUSED, errno.ECONNRESET, None):
                last += f" (errno {e.errno})"
        except http.client.HTTPException as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what} did not answer {url} with {expected} within {timeout}s "
                f"(last: {last})\n--- log tail ({log}) ---\n{log_tail(log)}"
            )
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> int | None:
    """
    SIGTERM, then SIGKILL after C{grace} seconds; returns the exit status.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def spawn(args: list[str], log_path: str, cwd: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """
    Start a server process with its output appended to C{log_path}.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env)


def temp_files(cache_dir: str) -> list[str]:
    """
    The temp files under a store's C{tmp/}: downloads in progress, or left
    behind.  C{tmp/locks/} beside them holds the key locks, which are not.
    """
    tmp = os.path.join(cache_dir, "tmp")
    return sorted(name for name in os.listdir(tmp) if name != "locks") if os.path.isdir(tmp) else []
