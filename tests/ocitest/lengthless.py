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

from .serving import LoopbackServer, send

__all__ = ["LengthlessUpstream"]


class LengthlessUpstream:
    def __init__(self, port: int | None = None) -> None:
        self.blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._seen: list[tuple[str, str]] = []
        # HTTP/1.0: a body may end with its connection.
        self._server = LoopbackServer(self._answer, port, one_request_per_connection=True, name="lengthless")

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> LengthlessUpstream:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def count(self, method: str, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for seen, path in self._seen if seen == method and path_contains in path)

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(handler.path).path)
        with self._lock:
            self._seen.append((handler.command, path))
        if path == "/v2/":
            send(handler, 200, b"{}")
            return
        _, sep, digest = path.rpartition("/blobs/")
        data = self.blobs.get(digest) if sep else None
        if data is None:
            send(handler, 404, content_type=None)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        if handler.command == "HEAD":
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            return
        handler.end_headers()
        handler.wfile.write(data)
