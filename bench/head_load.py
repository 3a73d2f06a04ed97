"""
A small closed-loop HTTP/1.1 load generator for what wrk 4.1 cannot do:
C{HEAD}.  (wrk's response parser is never told the request was a HEAD, so
it waits for the C{Content-Length} bytes of a body that never comes:
wg/wrk issue #198.)

    python head_load.py URL --connections 32 --seconds 3 [--method HEAD] [--accept ...]

Each connection is kept alive and sends its next request as soon as the
previous response is complete (as wrk does).  It prints C{ready}, waits
for C{go} on stdin, runs for C{--seconds} and prints one JSON object:
completed requests, errors, non-2xx/3xx answers and every latency in
microseconds.  Run one process per core for more load.  Standard library
only.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
import urllib.parse


class Conn:
    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = b""
        self.sent_at = 0.0
        self.need: int | None = None
        """Body bytes still to read (GET), once the headers are in."""
        self.connected = False


def run(url: str, connections: int, seconds: float, method: str, accept: str) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + ("?" + parts.query if parts.query else "")
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: {accept}\r\n"
        "User-Agent: ocibench-load/1\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()
    latencies: list[int] = []
    errors = 0
    bad_status = 0
    statuses: dict[str, int] = {}
    started = time.monotonic()
    deadline = started + seconds

    def open_conn(c: Conn) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c.sock, c.buf, c.need, c.connected = s, b"", None, False
        s.connect_ex((host, port))
        sel.register(s, selectors.EVENT_WRITE, c)

    def close_conn(c: Conn) -> None:
        if c.sock is not None:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            c.sock = None

    def send(c: Conn) -> None:
        assert c.sock is not None
        c.sent_at = time.monotonic()
        c.sock.sendall(request)

    conns = [Conn() for _ in range(connections)]
    for c in conns:
        open_conn(c)

    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        for key, _events in sel.select(min(0.1, deadline - now)):
            c = key.data
            if c.sock is None:
                continue
            try:
                if not c.connected:
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect failed")
                    c.connected = True
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                    send(c)
                    continue
                data = c.sock.recv(65536)
                if not data:
                    raise OSError("closed by the server")
                c.buf += data
                while True:
                    if c.need is None:
                        end = c.buf.find(b"\r\n\r\n")
                        if end < 0:
                            break
                        head = c.buf[:end].decode("latin-1")
                        c.buf = c.buf[end + 4:]
                        status = head.split(" ", 2)[1]
                        statuses[status] = statuses.get(status, 0) + 1
                        if not ("200" <= status < "400"):
                            bad_status += 1
                        length = 0
                        if method != "HEAD":
                            for line in head.split("\r\n")[1:]:
                                name, _, value = line.partition(":")
                                if name.strip().lower() == "content-length":
                                    length = int(value.strip())
                        c.need = length
                    if len(c.buf) < c.need:
                        break
                    c.buf = c.buf[c.need:]
                    c.need = None
                    done = time.monotonic()
                    latencies.append(int((done - c.sent_at) * 1e6))
                    if done < deadline:
                        send(c)
                    break
            except OSError:
                errors += 1
                close_conn(c)
                if time.monotonic() < deadline:
                    open_conn(c)
    elapsed = time.monotonic() - started
    for c in conns:
        close_conn(c)
    sel.close()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "errors": errors,
        "bad_status": bad_status,
        "statuses": statuses,
        "latencies_us": latencies,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--method", default="HEAD")
    p.add_argument("--accept", default="*/*")
    args = p.parse_args(argv[1:])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return 2
    result = run(args.url, args.connections, args.seconds, args.method, args.accept)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
