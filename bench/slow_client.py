"""
Many slow blob clients in one process: each connection reads the body at
about C{RATE} bytes per second (a small C{recv}, then it stays off the
selector until its byte budget allows the next one), with a small socket
receive buffer, so the server has to hold back rather than hand its bytes
to the kernel.

    python slow_client.py URL --clients 64 --rate 5000000 [--hash-every 8] [--seconds 30]

It prints C{ready}, waits for C{go} on stdin, connects every client at
once and prints one JSON object when all are done (or the deadline
passes).  With C{--seconds}, clients still reading then stop and close,
marked C{cut} (not an error): a big blob's steady state without reading
all of it at a slow pace.  Standard library only; one thread, a selector and a timer heap.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import selectors
import socket
import sys
import time
import urllib.parse


class Client:
    def __init__(self, index: int, hashed: bool) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.head = b""
        self.headers_done = False
        self.status: int | None = None
        self.length: int | None = None
        self.received = 0
        """Bytes off the socket, headers included (for pacing)."""
        self.body = 0
        self.hasher = hashlib.sha256() if hashed else None
        self.t_first: float | None = None
        self.t_end: float | None = None
        self.error: str | None = None
        self.done = False
        self.cut = False
        """Stopped by C{--seconds}, not finished."""
        self.sent = False
        """Whether the request went out (the connection is up)."""

    def result(self) -> dict[str, object]:
        return {
            "status": self.status,
            "content_length": self.length,
            "bytes": self.body,
            "sha256": ("sha256:" + self.hasher.hexdigest()) if self.hasher is not None else None,
            "t_first": self.t_first,
            "t_end": self.t_end,
            "error": self.error,
            "cut": self.cut,
        }


def run(url: str, clients: int, rate: float, recv_size: int, rcvbuf: int, hash_every: int,
        timeout: float, seconds: float = 0.0) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + ("?" + parts.query if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n"
        "User-Agent: ocibench-slow/1\r\nConnection: close\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    deadline = t0 + timeout
    window_end = t0 + seconds if seconds > 0 else None
    timers: list[tuple[float, int]] = []
    all_clients = [Client(i, hash_every > 0 and i % hash_every == 0) for i in range(clients)]
    live = 0

    def finish(c: Client, error: str | None = None) -> None:
        nonlocal live
        if c.done:
            return
        c.done = True
        c.error = c.error or error
        c.t_end = time.monotonic()
        if c.sock is not None:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            c.sock = None
        live -= 1

    for c in all_clients:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        c.sock = s
        live += 1
        err = s.connect_ex((host, port))
        if err not in (0, 115):  # EINPROGRESS
            finish(c, f"connect: errno {err}")
            continue
        sel.register(s, selectors.EVENT_WRITE, c)

    def on_writable(c: Client) -> None:
        assert c.sock is not None
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            finish(c, f"connect: errno {err}")
            return
        try:
            c.sock.sendall(request)
        except OSError as e:
            finish(c, f"send: {e}")
            return
        c.sent = True
        sel.modify(c.sock, selectors.EVENT_READ, c)

    def on_readable(c: Client) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(recv_size)
        except BlockingIOError:
            return
        except OSError as e:
            finish(c, f"recv: {e}")
            return
        now = time.monotonic()
        if not data:
            if not c.headers_done:
                finish(c, "closed before the headers")
            elif c.length is not None and c.body < c.length:
                finish(c, f"closed after {c.body} of {c.length} bytes")
            else:
                finish(c)
            return
        c.received += len(data)
        if not c.headers_done:
            c.head += data
            end = c.head.find(b"\r\n\r\n")
            if end < 0:
                if len(c.head) > 65536:
                    finish(c, "headers too long")
                return
            head, data = c.head[:end].decode("latin-1"), c.head[end + 4:]
            c.head = b""
            c.headers_done = True
            lines = head.split("\r\n")
            try:
                c.status = int(lines[0].split()[1])
            except (IndexError, ValueError):
                finish(c, f"bad status line {lines[0]!r}")
                return
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    c.length = int(value.strip())
        if data:
            if c.t_first is None:
                c.t_first = now
            c.body += len(data)
            if c.hasher is not None:
                c.hasher.update(data)
        if c.length is not None and c.body >= c.length:
            if c.body > c.length:
                c.error = f"received {c.body} bytes, more than {c.length}"
            finish(c)
            return
        allowed_at = t0 + c.received / rate
        if allowed_at > now + 0.001:
            sel.unregister(c.sock)
            heapq.heappush(timers, (allowed_at, c.index))

    while live > 0:
        now = time.monotonic()
        if window_end is not None and now >= window_end:
            for c in all_clients:
                if not c.done and c.headers_done:
                    c.cut = True
                    finish(c)
                elif not c.done:
                    finish(c, f"no headers after {seconds:g}s")
            break
        if now > deadline:
            for c in all_clients:
                if not c.done:
                    finish(c, f"deadline: {c.body} bytes after {timeout:.0f}s")
            break
        while timers and timers[0][0] <= now:
            _, index = heapq.heappop(timers)
            c = all_clients[index]
            if not c.done and c.sock is not None:
                sel.register(c.sock, selectors.EVENT_READ, c)
        wait = min(timers[0][0] - now if timers else 0.5, deadline - now, 0.5,
                   window_end - now if window_end is not None else 0.5)
        if not sel.get_map():
            time.sleep(max(0.0, wait))
            continue
        for key, events in sel.select(max(0.0, wait)):
            c = key.data
            if c.done:
                continue
            if not c.sent:
                if events & selectors.EVENT_WRITE:
                    on_writable(c)
            elif events & selectors.EVENT_READ:
                on_readable(c)
    sel.close()
    return {"t_go": t0, "t_end": time.monotonic(), "clients": [c.result() for c in all_clients]}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rate", type=float, default=5e6, help="bytes per second per client")
    p.add_argument("--recv", type=int, default=64 << 10, help="bytes per recv")
    p.add_argument("--rcvbuf", type=int, default=128 << 10, help="SO_RCVBUF")
    p.add_argument("--hash-every", type=int, default=8, help="hash every Nth client's body (0: none)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=0.0, help="stop reading after this long (0: never)")
    args = p.parse_args(argv[1:])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return 2
    result = run(args.url, args.clients, args.rate, args.recv, args.rcvbuf, args.hash_every, args.timeout,
                 args.seconds)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
