"""
The one small HTTP server the test upstreams share: a stdlib
C{ThreadingHTTPServer} on 127.0.0.1 in a daemon thread, one thread per
connection, each request handed to an C{answer(handler)} function.

    server = LoopbackServer(answer).start()
    server.url      # http://127.0.0.1:<port>
    server.stop()   # connections refused from now on

C{one_request_per_connection} answers HTTP/1.0, so that once stopped
nothing more is answered, not even on a connection kept open, and a body
may end with the connection (no C{Content-Length}).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any

from . import free_port

__all__ = ["Answer", "LoopbackServer", "send"]

Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


class LoopbackServer:
    def __init__(self, answer: Answer, port: int | None = None, one_request_per_connection: bool = False,
                 name: str = "test-server") -> None:
        self.port = port or free_port()
        self._answer = answer
        self._protocol = "HTTP/1.0" if one_request_per_connection else "HTTP/1.1"
        self._name = name
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LoopbackServer:
        answer = self._answer

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = self._protocol

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                answer(self)

            do_HEAD = do_GET

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=self._name)
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


def send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
         content_type: str | None = "application/json", headers: dict[str, str] | None = None) -> None:
    """One whole answer with its C{Content-Length}; a C{HEAD} gets the headers only."""
    handler.send_response(status)
    if content_type is not None:
        handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command != "HEAD" and body:
        handler.wfile.write(body)
