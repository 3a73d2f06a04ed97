"""
L{Dockerd}: Debian's C{dockerd} (package C{docker.io}) on a private socket
with a given C{daemon.json}, pulling only: no bridge, no iptables, the
C{vfs} storage driver, its own managed containerd, all state in a
short temporary directory (unix socket paths are limited to 108 bytes)
that L{stop} removes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from . import log_tail, require_binary, spawn, stop_process

__all__ = ["Dockerd"]


class Dockerd:
    def __init__(self, config_file: str) -> None:
        self.config_file = config_file
        self.state = tempfile.mkdtemp(prefix="ocd-", dir="/tmp")
        self.socket = os.path.join(self.state, "docker.sock")
        self.log_path = os.path.join(self.state, "dockerd.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Dockerd:
        binary = require_binary("dockerd")
        self.proc = spawn([
            binary, "--config-file", self.config_file, "--host", f"unix://{self.socket}",
            "--data-root", os.path.join(self.state, "data"), "--exec-root", os.path.join(self.state, "exec"),
            "--pidfile", os.path.join(self.state, "dockerd.pid"), "--iptables=false", "--ip6tables=false",
            "--bridge=none", "--storage-driver=vfs",
        ], self.log_path, self.state)
        deadline = time.monotonic() + timeout
        while self.docker("version", timeout=10).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = log_tail(self.log_path)
                self.stop()
                raise RuntimeError(f"dockerd did not start\n{tail}")
            time.sleep(0.2)
        return self

    def docker(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """The C{docker} CLI against this daemon (the API version is negotiated)."""
        return subprocess.run([require_binary("docker"), "--host", f"unix://{self.socket}", *args],
                              capture_output=True, text=True, timeout=timeout)

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        # dockerd stops the containerd it started.
        stop_process(self.proc, grace=20.0)
        self.proc = None
        shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
