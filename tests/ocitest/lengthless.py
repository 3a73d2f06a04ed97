"""
A small upstream that streams blob bodies without a C{Content-Length}
(the body ends when the connection closes, as HTTP/1.0 allows), while its
C{HEAD} announces the length: what distribution never does, and what a
mirror must still answer with a C{Content-Length}.

    upstream = LengthlessUpstream().start()
    upstream.blobs[digest] = data
    upstream.count("GET", "/blobs/")
    upstream.stop()

Standard library only, one thread per connection.
"""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from typing import Any

from . import free_port

__all__ = ["LengthlessUpstream"]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    upstream: LengthlessUpstream


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self.server.upstream._answer(self)

    do_HEAD = do_GET


class LengthlessUpstream:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._seen: list[tuple[str, str]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LengthlessUpstream:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.upstream = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def count(self, method: str, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for seen, path in self._seen if seen == method and path_contains in path)

    def _answer(self, handler: _Handler) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(handler.path).path)
        with self._lock:
            self._seen.append((handler.command, path))
        if path == "/v2/":
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            if handler.command == "GET":
                handler.wfile.write(b"{}")
            return
        _, sep, digest = path.rpartition("/blobs/")
        data = self.blobs.get(digest) if sep else None
        if data is None:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        if handler.command == "HEAD":
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            return
        handler.end_headers()
        handler.wfile.write(data)
