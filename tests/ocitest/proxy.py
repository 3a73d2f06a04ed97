"""
L{Tinyproxy}: Debian's C{tinyproxy} on 127.0.0.1, optionally with Basic
proxy authentication, logging every request it carries to a file the
tests read (C{CONNECT host:port} for a tunnel, C{GET http://...} for a
request in absolute form).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from . import free_port, log_tail, require_binary, spawn, stop_process

__all__ = ["Tinyproxy"]


class Tinyproxy:
    """One C{tinyproxy -d} process, its config and log under C{workdir}."""

    def __init__(self, workdir: str, credentials: tuple[str, str] | None = None) -> None:
        self.workdir = os.path.abspath(workdir)
        self.credentials = credentials
        self.port = free_port()
        self.config_path = os.path.join(self.workdir, "tinyproxy.conf")
        self.log_path = os.path.join(self.workdir, "tinyproxy.log")
        self.output_path = os.path.join(self.workdir, "tinyproxy.out")
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, credentials: tuple[str, str] | None = None) -> str:
        """The proxy's URL, with C{credentials} in it when given."""
        userinfo = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            f'LogFile "{self.log_path}"',
            "LogLevel Connect",
            "MaxClients 64",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
            # No ConnectPort line: CONNECT to any port (the upstreams' are random).
        ]
        if self.credentials is not None:
            lines.append(f"BasicAuth {self.credentials[0]} {self.credentials[1]}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> Tinyproxy:
        binary = require_binary("tinyproxy")
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        self.proc = spawn([binary, "-d", "-c", self.config_path], self.output_path, self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tinyproxy did not listen on {self.port}\n{log_tail(self.output_path)}")
            time.sleep(0.05)

    def requests(self) -> list[str]:
        """Every request line it logged: C{CONNECT 127.0.0.1:5000 HTTP/1.1}, C{GET http://... HTTP/1.1}."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        marker = "]: Request (file descriptor "
        found = []
        for line in text.splitlines():
            if marker in line:
                found.append(line.split(marker, 1)[1].split("): ", 1)[1])
        return found

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> Tinyproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
