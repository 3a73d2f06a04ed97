"""
Many idle keep-alive connections to one server, held open: each connects,
sends one small request (C{GET URL}, e.g. C{/v2/}), reads the whole
response and then sends nothing more, as a client between pulls does.

    python idle_conns.py URL --connections 1000 [--parallel 32] [--max-seconds 300]

They are opened C{--parallel} at a time.  It prints C{ready N} once N connections have had their answer, then waits
for a line on stdin (or C{--max-seconds}, whichever comes first: it never
outlives a crashed parent for long), checks which connections the server
has closed meanwhile, closes them all and prints one JSON object.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import select
import selectors
import socket
import sys
import time
import urllib.parse


def open_all(url: str, connections: int, timeout: float,
             parallel: int = 32) -> tuple[list[socket.socket], dict[str, object]]:
    """
    Open C{connections} connections, at most C{parallel} at a time still
    waiting for their answer (clients come and go over time; a burst of a
    thousand connects would measure the server's listen backlog instead),
    each with one request answered.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + ("?" + parts.query if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n"
        "User-Agent: ocibench-idle/1\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytearray] = {}
    done: list[socket.socket] = []
    errors: list[str] = []
    statuses: dict[str, int] = {}
    to_open = connections

    def open_more() -> None:
        nonlocal to_open
        while to_open > 0 and len(pending) < parallel:
            to_open -= 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((host, port))
            pending[s] = bytearray()
            sel.register(s, selectors.EVENT_WRITE, s)

    deadline = time.monotonic() + timeout
    open_more()
    while (pending or to_open) and time.monotonic() < deadline:
        open_more()
        for key, events in sel.select(0.2):
            s = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect failed")
                    s.sendall(request)
                    sel.modify(s, selectors.EVENT_READ, s)
                    continue
                data = s.recv(65536)
                if not data:
                    raise OSError("closed before the answer")
                buf = pending[s]
                buf += data
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = bytes(buf[:end]).decode("latin-1")
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if len(buf) - end - 4 < length:
                    continue
                status = head.split(" ", 2)[1]
                statuses[status] = statuses.get(status, 0) + 1
                sel.unregister(s)
                del pending[s]
                done.append(s)
            except BlockingIOError:
                continue
            except OSError as e:
                errors.append(str(e))
                sel.unregister(s)
                del pending[s]
                s.close()
    errors.extend(["never opened: out of time"] * to_open)
    for s in pending:
        errors.append("no answer in time")
        sel.unregister(s)
        s.close()
    sel.close()
    return done, {"errors": len(errors), "error_sample": errors[:3], "statuses": statuses}


def still_open(socks: list[socket.socket]) -> int:
    """
    How many of C{socks} the server has not closed (an idle connection
    the server closed polls readable and reads as end-of-file).
    """
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = 0
    for fd, _events in poller.poll(0):
        try:
            if not by_fd[fd].recv(1, socket.MSG_PEEK):
                closed += 1
        except OSError:
            closed += 1
    return len(socks) - closed


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--parallel", type=int, default=32, help="connections opening at once")
    p.add_argument("--max-seconds", type=float, default=300.0)
    args = p.parse_args(argv[1:])
    started = time.monotonic()
    socks, report = open_all(args.url, args.connections, 60.0, args.parallel)
    report["opened"] = len(socks)
    report["open_seconds"] = round(time.monotonic() - started, 3)
    sys.stdout.write(f"ready {len(socks)}\n")
    sys.stdout.flush()
    left = max(0.0, args.max_seconds - (time.monotonic() - started))
    waiter = select.poll()
    waiter.register(sys.stdin.fileno(), select.POLLIN)
    waiter.poll(int(left * 1000))
    report["held_seconds"] = round(time.monotonic() - started, 3)
    report["still_open"] = still_open(socks)
    for s in socks:
        s.close()
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
