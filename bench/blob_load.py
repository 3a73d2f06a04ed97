"""
A time-bounded, closed-loop blob download load: C{--connections}
keep-alive connections in one process, each GETting the URL again as soon
as the previous body is complete, for C{--seconds}.  Bodies are read with
C{recv_into} into one 1 MiB buffer and thrown away (only counted), so the
client costs about one copy per byte, like C{curl -o /dev/null}.

    python blob_load.py URL --connections 64 --seconds 3

Unlike wrk (8 KiB reads) it keeps up with a sendfile server; unlike a
process per download it holds hundreds of connections cheaply, and a run
takes C{--seconds} whatever the blob size (a body still in flight at the
end counts with the bytes it got).  It prints C{ready}, waits for C{go} on
stdin, and prints one JSON object: body bytes, complete responses, errors,
responses with a status other than 200 or a body other than the announced
C{Content-Length}, the seconds it ran, and how long the slowest connection
waited for its first answer (all connect at once: a short listen backlog
shows there).  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
import urllib.parse

BUF = 1 << 20


class Conn:
    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.head = b""
        self.need: int | None = None
        """Body bytes still to come, once the headers are in."""
        self.connected = False
        self.first_headers: float | None = None
        """When its first response's headers were in."""


def run(url: str, connections: int, seconds: float) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + ("?" + parts.query if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n"
        "User-Agent: ocibench-blob/1\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()
    buf = bytearray(BUF)
    view = memoryview(buf)
    body_bytes = 0
    responses = 0
    errors = 0
    bad = 0
    statuses: dict[str, int] = {}
    started = time.monotonic()
    deadline = started + seconds

    def open_conn(c: Conn) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        c.sock, c.head, c.need, c.connected = s, b"", None, False
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
                    c.sock.sendall(request)
                    continue
                if c.need is None:
                    data = c.sock.recv(65536)
                    if not data:
                        raise OSError("closed by the server")
                    c.head += data
                    end = c.head.find(b"\r\n\r\n")
                    if end < 0:
                        if len(c.head) > 65536:
                            raise OSError("headers too long")
                        continue
                    if c.first_headers is None:
                        c.first_headers = time.monotonic() - started
                    head = c.head[:end].decode("latin-1")
                    rest = len(c.head) - end - 4
                    c.head = b""
                    status = head.split(" ", 2)[1]
                    statuses[status] = statuses.get(status, 0) + 1
                    length = None
                    for line in head.split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value.strip())
                    if status != "200" or length is None:
                        # Not a blob: count it and start over on a new
                        # connection (the body's framing is unknown).
                        bad += 1
                        close_conn(c)
                        open_conn(c)
                        continue
                    if rest > length:
                        raise OSError("more bytes than the Content-Length")
                    body_bytes += rest
                    c.need = length - rest
                else:
                    n = c.sock.recv_into(view, min(BUF, c.need))
                    if not n:
                        raise OSError(f"closed with {c.need} body bytes to come")
                    body_bytes += n
                    c.need -= n
                if c.need == 0:
                    c.need = None
                    responses += 1
                    c.sock.sendall(request)
            except BlockingIOError:
                continue
            except OSError:
                errors += 1
                close_conn(c)
                if time.monotonic() < deadline:
                    open_conn(c)
    elapsed = time.monotonic() - started
    firsts = [c.first_headers for c in conns if c.first_headers is not None]
    for c in conns:
        close_conn(c)
    sel.close()
    return {
        "first_headers_max_s": max(firsts) if firsts else None,
        "never_answered": len(conns) - len(firsts),
        "bytes": body_bytes,
        "responses": responses,
        "seconds": elapsed,
        "errors": errors,
        "bad": bad,
        "statuses": statuses,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv[1:])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return 2
    result = run(args.url, args.connections, args.seconds)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
