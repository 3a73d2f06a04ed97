"""
A real Redis for the fleet tests: Debian's C{redis-server} on loopback,
on a free port, without persistence.

    redis = RedisServer("/tmp/work/redis").start()   # waits for PING -> PONG
    redis.url                                        # redis://127.0.0.1:<port>/0
    redis.stop(); redis.start()                      # the same port again
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from . import free_port, log_tail, require_binary, spawn, stop_process

__all__ = ["RedisServer"]


class RedisServer:
    def __init__(self, workdir: str, port: int | None = None, password: str | None = None) -> None:
        self.workdir = os.path.abspath(workdir)
        self.password = password
        self.port = port or free_port()
        self.log_path = os.path.join(self.workdir, "redis.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """One command in RESP, for the tests' own checks; returns the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as conn:
            if self.password is not None:
                conn.sendall(_resp("AUTH", self.password))
                conn.recv(65536)
            conn.sendall(_resp(*args))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

    def _answers(self) -> bool:
        try:
            return self.command("PING") == b"+PONG\r\n"
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = require_binary("redis-server")
        os.makedirs(self.workdir, exist_ok=True)
        self.proc = spawn(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.workdir, *(["--requirepass", self.password] if self.password else [])],
            self.log_path, self.workdir,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on {self.port}\n{log_tail(self.log_path)}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace=5.0)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _resp(*args: str) -> bytes:
    return f"*{len(args)}\r\n".encode() + b"".join(f"${len(arg.encode())}\r\n{arg}\r\n".encode() for arg in args)
