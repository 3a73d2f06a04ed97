"""
A counting, fault-injecting reverse proxy ("hop") on loopback, put between
the daemon and the upstream registry so a test can see and break every
request the daemon makes upstream.

    hop = Hop(registry.url).start()
    ...  # point the daemon's upstream url at hop.url
    hop.count("GET", "/blobs/")        # requests seen (matched against the
                                       # percent-decoded path and query)
    hop.bytes_sent                     # response body bytes sent so far
    hop.down = True                    # answer 503 to everything
    hop.stop(); hop.start()            # refuse connections, then come back
    hop.fail_mid_stream(4096, path_contains=digest)  # cut a body short
    hop.throttle = 64 << 20            # bytes/s per response body
    hop.response_headers = lambda rec: {"ratelimit-remaining": "76;w=21600"}
                                       # headers added to every response
    hop.answer(429, {"Retry-After": "5"}, path_contains="/manifests/")
                                       # a canned answer, never forwarded
    hop.reset()                        # forget requests, clear faults

Standard library only (C{http.server.ThreadingHTTPServer} + C{http.client}),
one thread per connection, so it never touches a Twisted reactor and can run
in the same process as pytest-twisted.  Bodies are streamed both ways in
chunks of at most 1 MiB (responses with C{read1}, so the first bytes go out
as soon as they arrive): a 256 MiB blob is never held whole.

The C{Host} header is passed through unchanged (a transparent proxy), so
absolute URLs the registry builds point back at the hop.
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import free_port

__all__ = ["Canned", "Hop", "HopRequest", "Fault"]

CHUNK = 1 << 20

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class HopRequest:
    """
    One request the hop received, updated live while it is answered.
    """

    method: str
    path: str
    """The request path, percent-decoded (C{sha256%3A...} reads C{sha256:...})."""
    query: str
    headers: dict[str, str]
    raw_path: str = ""
    """The path exactly as sent."""
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    content_length: int | None = None
    bytes_sent: int = 0
    """Response body bytes written to the client so far."""
    first_byte_at: float | None = None
    finished: float | None = None
    error: str | None = None
    injected: str | None = None
    """C{"down"}, C{"canned"} or C{"cut"} if the hop answered or broke it on purpose."""

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    @property
    def params(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(self.query, keep_blank_values=True)

    @property
    def done(self) -> bool:
        return self.finished is not None

    def __repr__(self) -> str:
        return (
            f"<{self.method} {self.target} -> {self.status} "
            f"{self.bytes_sent}/{self.content_length}{' ' + self.injected if self.injected else ''}"
            f"{' err=' + self.error if self.error else ''}>"
        )


@dataclass
class Fault:
    """
    Cut matching responses after C{after_bytes} body bytes (headers carry
    the full C{Content-Length}), C{times} times (C{None}: always).
    """

    after_bytes: int
    path_contains: str | None = None
    method: str | None = "GET"
    times: int | None = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        path = urllib.parse.unquote(path)
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        return True


@dataclass
class Canned:
    """
    Answer matching requests with C{status}, C{headers} and a
    distribution-spec error body of C{code}, C{times} times (C{None}:
    always), instead of forwarding them.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    code: str = "TOOMANYREQUESTS"
    message: str = "hop: canned answer"
    path_contains: str | None = None
    method: str | None = None
    times: int | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        return self.path_contains is None or self.path_contains in urllib.parse.unquote(path)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128
    hop: Hop

    def process_request(self, request: Any, client_address: Any) -> None:
        self.hop._track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.hop._untrack(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client (a load generator at the end of its run, a test that
        # hangs up) resetting its connection is not worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _proxy(self) -> None:
        self.server.hop._handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _proxy


class Hop:
    def __init__(self, upstream_url: str, port: int | None = None, chunk_size: int = CHUNK) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the hop forwards to http:// only, not {upstream_url!r}")
        self.upstream_url = upstream_url.rstrip("/")
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self.port = port or free_port()
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._requests: list[HopRequest] = []
        self._bytes_sent = 0
        self._faults: list[Fault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.down = False
        """Answer every request with 503 (counted, not forwarded)."""
        self.down_status = 503
        self.throttle: float | None = None
        """Bytes per second per response body, or C{None} for full speed."""
        self.delay: float = 0.0
        """Seconds to wait before forwarding each request."""
        self._canned: list[Canned] = []
        self.response_headers: Callable[[HopRequest], Mapping[str, str]] | None = None
        """Headers added to every response (forwarded, canned or down), given the request."""

    # --- lifecycle ------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Hop:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.hop = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"hop:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """
        Stop listening and break every open connection: the port refuses
        connections until L{start} is called again.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Hop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    # --- observation ----------------------------------------------------

    @property
    def requests(self) -> list[HopRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def bytes_sent(self) -> int:
        """
        Response body bytes sent to clients since the last L{reset}.
        """
        return self._bytes_sent

    def matching(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        status: int | None = None,
    ) -> list[HopRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method)
            and (path_contains is None or path_contains in r.target)
            and (status is None or r.status == status)
        ]

    def count(self, method: str | None = None, path_contains: str | None = None,
              status: int | None = None) -> int:
        return len(self.matching(method, path_contains, status))

    def bytes_sent_for(self, path_contains: str, method: str | None = "GET") -> int:
        return sum(r.bytes_sent for r in self.matching(method, path_contains))

    def in_flight(self) -> list[HopRequest]:
        return [r for r in self.requests if not r.done]

    def wait_idle(self, timeout: float = 10.0, settle: float = 0.2) -> None:
        """
        Wait until no request has been in flight for C{settle} seconds.
        """
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while True:
            now = time.monotonic()
            if self.in_flight():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= settle:
                return
            if now > deadline:
                raise TimeoutError(f"hop still busy after {timeout}s: {self.in_flight()}")
            time.sleep(0.02)

    def summary(self) -> str:
        return "\n".join(repr(r) for r in self.requests) or "(no requests)"

    # --- faults -----------------------------------------------------------

    def fail_mid_stream(
        self,
        after_bytes: int,
        path_contains: str | None = None,
        method: str | None = "GET",
        times: int | None = 1,
    ) -> Fault:
        fault = Fault(after_bytes, path_contains, method, times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def answer(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        path_contains: str | None = None,
        method: str | None = None,
        times: int | None = None,
        code: str = "TOOMANYREQUESTS",
        message: str = "hop: canned answer",
    ) -> Canned:
        """
        Answer matching requests with C{status} and C{headers} (counted like
        any request, never forwarded) until L{clear_answers} or L{reset}.
        """
        canned = Canned(status, dict(headers or {}), code, message, path_contains, method, times)
        with self._lock:
            self._canned.append(canned)
        return canned

    def clear_answers(self) -> None:
        with self._lock:
            self._canned = []

    def _take_canned(self, method: str, path: str) -> Canned | None:
        with self._lock:
            for canned in self._canned:
                if canned.matches(method, path):
                    canned.hits += 1
                    return canned
        return None

    def reset(self) -> None:
        """
        Forget recorded requests and counters, clear every fault, come back
        up (listening, not down, no throttle or delay).
        """
        with self._lock:
            self._requests = []
            self._bytes_sent = 0
            self._faults = []
            self._canned = []
        self.down = False
        self.response_headers = None
        self.down_status = 503
        self.throttle = None
        self.delay = 0.0
        if self._server is None:
            self.start()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    # --- the proxy --------------------------------------------------------

    def _record(self, handler: _Handler) -> HopRequest:
        raw_path, _, query = handler.path.partition("?")
        rec = HopRequest(
            method=handler.command,
            path=urllib.parse.unquote(raw_path),
            query=query,
            headers={k: v for k, v in handler.headers.items()},
            raw_path=raw_path,
        )
        with self._lock:
            self._requests.append(rec)
        return rec

    def _count_bytes(self, rec: HopRequest, n: int) -> None:
        with self._lock:
            if rec.first_byte_at is None and n:
                rec.first_byte_at = time.monotonic()
            rec.bytes_sent += n
            self._bytes_sent += n

    def _read_request_body(self, handler: _Handler) -> tuple[bytes | None, int | None]:
        te = handler.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            parts = []
            while True:
                line = handler.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(handler.rfile.read(size))
                handler.rfile.readline(65537)
            body = b"".join(parts)
            return body, len(body)
        length = handler.headers.get("Content-Length")
        if length is None:
            return None, None
        return None, int(length)

    def _handle(self, handler: _Handler) -> None:
        rec = self._record(handler)
        try:
            self._forward(handler, rec)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
            rec.error = f"client: {type(e).__name__}"
            handler.close_connection = True
        except Exception as e:  # the upstream failed
            rec.error = f"{type(e).__name__}: {e}"
            handler.close_connection = True
            if rec.status is None:
                try:
                    self._send_simple(handler, rec, 502, "BAD_GATEWAY", f"hop: upstream failed: {e}")
                except OSError:
                    pass
        finally:
            rec.finished = time.monotonic()

    def _send_simple(self, handler: _Handler, rec: HopRequest, status: int, code: str, message: str,
                     headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
        _, length = self._read_request_body(handler)
        if length:
            # Drain the request body so the connection stays usable.
            left = length
            while left > 0:
                got = handler.rfile.read(min(CHUNK, left))
                if not got:
                    break
                left -= len(got)
        rec.status = status
        rec.content_length = len(body)
        handler.send_response_only(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in {**(headers or {}), **self._added_headers(rec)}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
            self._count_bytes(rec, len(body))
        handler.wfile.flush()

    def _forward(self, handler: _Handler, rec: HopRequest) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            rec.injected = "down"
            self._send_simple(handler, rec, self.down_status, "UNAVAILABLE", "hop: upstream is down")
            return
        canned = self._take_canned(handler.command, handler.path)
        if canned is not None:
            rec.injected = "canned"
            self._send_simple(handler, rec, canned.status, canned.code, canned.message, canned.headers)
            return

        method = handler.command
        body, length = self._read_request_body(handler)
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=300)
        try:
            conn.putrequest(method, handler.path, skip_host=True, skip_accept_encoding=True)
            for name, value in handler.headers.items():
                if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                    continue
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            elif length is not None:
                conn.putheader("Content-Length", str(length))
            conn.endheaders()
            if body is not None:
                conn.send(body)
            elif length:
                left = length
                while left > 0:
                    piece = handler.rfile.read(min(self.chunk_size, left))
                    if not piece:
                        raise ConnectionResetError("client closed while sending the request body")
                    conn.send(piece)
                    left -= len(piece)

            response = conn.getresponse()
            rec.status = response.status
            has_body = method != "HEAD" and response.status not in (204, 304) and not 100 <= response.status < 200
            upstream_length = response.getheader("Content-Length")
            chunked = has_body and upstream_length is None
            rec.content_length = int(upstream_length) if upstream_length is not None else None

            fault = self._take_fault(method, handler.path) if has_body else None

            handler.send_response_only(response.status, response.reason)
            added = self._added_headers(rec)
            lowered = {name.lower() for name in added}
            for name, value in response.getheaders():
                if name.lower() in _HOP_BY_HOP or name.lower() in lowered:
                    continue
                handler.send_header(name, value)
            for name, value in added.items():
                handler.send_header(name, value)
            if chunked:
                handler.send_header("Transfer-Encoding", "chunked")
            if fault is not None:
                handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.flush()

            if not has_body:
                response.read()
                return

            limit = fault.after_bytes if fault is not None else None
            step = self.chunk_size
            if self.throttle is not None:
                step = max(4096, min(self.chunk_size, int(self.throttle / 50)))
            t0 = time.monotonic()
            sent = 0
            while True:
                piece = response.read1(step)
                if not piece:
                    break
                if limit is not None and sent + len(piece) >= limit:
                    piece = piece[: max(0, limit - sent)]
                    if piece:
                        self._write(handler, piece, chunked)
                        sent += len(piece)
                        self._count_bytes(rec, len(piece))
                    rec.injected = "cut"
                    handler.wfile.flush()
                    handler.close_connection = True
                    try:
                        handler.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self._write(handler, piece, chunked)
                sent += len(piece)
                self._count_bytes(rec, len(piece))
                if self.throttle:
                    ahead = sent / self.throttle - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        finally:
            conn.close()

    def _added_headers(self, rec: HopRequest) -> Mapping[str, str]:
        add = self.response_headers
        return add(rec) if add is not None else {}

    @staticmethod
    def _write(handler: _Handler, piece: bytes, chunked: bool) -> None:
        if chunked:
            handler.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
        else:
            handler.wfile.write(piece)
