"""
A client that reads a response slowly: a transfer that is still going
while the test stops or kills something.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time


class SlowClient(threading.Thread):
    """
    GETs one path over a raw socket with a small receive buffer and reads
    the body at C{rate} bytes per second (or, with C{rate=0}, reads only
    the headers and then nothing at all).
    """

    def __init__(self, port: int, path: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.rate = rate
        self.status: int | None = None
        self.length: int | None = None
        self.received = 0
        self.hasher = hashlib.sha256()
        self.error: BaseException | None = None
        self.closed_early = False
        self.started_body = threading.Event()
        self.stop_reading = threading.Event()
        self.sock: socket.socket | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.started_body.set()

    def _run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed before the headers")
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                self.length = int(value.strip())
        self.hasher.update(body)
        self.received = len(body)
        self.started_body.set()
        if self.rate == 0:
            self.stop_reading.wait(60)
            sock.close()
            return
        began = time.monotonic()
        assert self.length is not None
        while self.received < self.length:
            ahead = self.received / self.rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(min(ahead, 0.05))
            chunk = sock.recv(32 * 1024)
            if not chunk:
                self.closed_early = True
                break
            self.hasher.update(chunk)
            self.received += len(chunk)
        sock.close()
