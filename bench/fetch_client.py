"""
One blob client in its own process (no GIL shared with anyone): GET a URL,
read the body in 1 MiB chunks, hash it, report one JSON line.

    python fetch_client.py URL [TIMEOUT]

It prints C{ready} once started, waits for a C{go} line on stdin (so a
parent can start many at the same instant), then fetches.  Times are
C{time.monotonic()} values, which on Linux are one system-wide clock
(C{CLOCK_MONOTONIC}), so the parent can compare them with its own.

Standard library only.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import time
import urllib.parse

CHUNK = 1 << 20


def fetch(url: str, timeout: float) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    out: dict[str, object] = {
        "t_go": time.monotonic(),
        "status": None,
        "content_length": None,
        "bytes": 0,
        "t_headers": None,
        "t_first": None,
        "t_end": None,
        "sha256": None,
        "error": None,
    }
    hasher = hashlib.sha256()
    received = 0
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Accept": "*/*"})
        response = conn.getresponse()
        out["t_headers"] = time.monotonic()
        out["status"] = response.status
        length = response.getheader("Content-Length")
        out["content_length"] = int(length) if length and length.isdigit() else None
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = response.readinto(view)
            if not n:
                break
            if received == 0:
                out["t_first"] = time.monotonic()
            hasher.update(view[:n])
            received += n
    except Exception as e:  # report, don't crash: the parent counts failures
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    out["t_end"] = time.monotonic()
    out["bytes"] = received
    out["sha256"] = "sha256:" + hasher.hexdigest()
    return out


def main(argv: list[str]) -> int:
    url = argv[1]
    timeout = float(argv[2]) if len(argv) > 2 else 300.0
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return 2
    sys.stdout.write(json.dumps(fetch(url, timeout)) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
