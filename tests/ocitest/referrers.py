"""
A small upstream with the listings distribution 2.8 lacks: the referrers
API (distribution-spec "Listing Referrers"), and tag lists paged with
C{n} and C{last} ("Listing Tags"; 2.8 ignores both).  It answers C{/v2/},
C{/v2/<name>/referrers/<digest>} and C{/v2/<name>/tags/list} from what a
test gives it, with C{Link} pagination and C{artifactType} filtering, and
counts every request.

    upstream = ReferrersUpstream().start()
    upstream.referrers[("library/app", subject)] = [descriptor, ...]
    upstream.tags["library/app"] = ["a", "b", "c"]
    upstream.page_size = 2          # a Link to the next page past this
    upstream.filters = False        # ignore artifactType, as the spec allows
    upstream.listing_type = "text/html"   # listings that are not an index
    upstream.status = 429           # answer everything with this, no Retry-After
    upstream.delay = 0.5            # seconds before each answer
    upstream.count("/referrers/")   # requests seen
    upstream.stop()                 # connections refused from now on

Pages are cut after the descriptor (by digest) or tag named by C{last},
C{n} at a time, and the C{Link} is absolute, pointing back at this server, as
registries write it.  Standard library only, one thread per connection.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from typing import Any

from . import free_port

__all__ = ["IMAGE_INDEX", "ReferrersUpstream"]

IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    upstream: ReferrersUpstream


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so that once stopped nothing
    # is answered, not even on a connection kept open.
    protocol_version = "HTTP/1.0"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self.server.upstream._answer(self)

    do_HEAD = do_GET


class ReferrersUpstream:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.referrers: dict[tuple[str, str], list[dict[str, object]]] = {}
        """The descriptors listed for (repository, subject digest)."""
        self.tags: dict[str, list[str]] = {}
        """The tags of each repository, in order."""
        self.page_size = 100
        self.filters = True
        """Whether C{artifactType} is applied (and C{OCI-Filters-Applied} sent)."""
        self.status: int | None = None
        self.listing_type = IMAGE_INDEX
        """The C{Content-Type} of referrers listings: anything else says "no API"."""
        self.delay = 0.0
        """Seconds to wait before answering each request."""
        self._lock = threading.Lock()
        self._seen: list[tuple[str, dict[str, list[str]]]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReferrersUpstream:
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

    def count(self, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for path, _ in self._seen if path_contains in path)

    def queries(self, path_contains: str = "") -> list[dict[str, list[str]]]:
        """The query of each request seen whose path holds C{path_contains}."""
        with self._lock:
            return [query for path, query in self._seen if path_contains in path]

    def _answer(self, handler: _Handler) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        path = urllib.parse.unquote(parts.path)
        query = urllib.parse.parse_qs(parts.query)
        with self._lock:
            self._seen.append((path, query))
        time.sleep(self.delay)
        if self.status is not None:
            self._send(handler, self.status, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
                       "application/json")
            return
        if path == "/v2/":
            self._send(handler, 200, b"{}", "application/json")
            return
        if path.endswith("/tags/list") and path.removeprefix("/v2/")[:-len("/tags/list")] in self.tags:
            self._tags(handler, path.removeprefix("/v2/")[:-len("/tags/list")], query)
            return
        name, sep, subject = path.removeprefix("/v2/").rpartition("/referrers/")
        if not sep:
            self._send(handler, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}', "application/json")
            return
        entries = list(self.referrers.get((name, subject), []))
        headers: dict[str, str] = {}
        wanted = query.get("artifactType", [None])[0]
        if wanted is not None and self.filters:
            entries = [entry for entry in entries if entry.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        last = query.get("last", [None])[0]
        if last is not None:
            digests = [entry["digest"] for entry in entries]
            entries = entries[digests.index(last) + 1:] if last in digests else []
        n = int(query.get("n", [str(self.page_size)])[0])
        page, rest = entries[:n], entries[n:]
        if rest:
            following = {"n": str(n), "last": str(page[-1]["digest"])}
            if wanted is not None:
                following["artifactType"] = wanted
            link = f"{self.url}/v2/{name}/referrers/{subject}?{urllib.parse.urlencode(following)}"
            headers["Link"] = f'<{link}>; rel="next"'
        body = json.dumps({"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": page}).encode()
        self._send(handler, 200, body, self.listing_type, headers)

    def _tags(self, handler: _Handler, name: str, query: dict[str, list[str]]) -> None:
        tags = self.tags[name]
        last = query.get("last", [None])[0]
        if last is not None:
            tags = [tag for tag in tags if tag > last]
        n = int(query.get("n", [str(len(tags) or 1)])[0])
        page, rest = tags[:n], tags[n:]
        headers = {}
        if rest:
            following = urllib.parse.urlencode({"n": str(n), "last": page[-1]})
            headers["Link"] = f'<{self.url}/v2/{name}/tags/list?{following}>; rel="next"'
        body = json.dumps({"name": name, "tags": page}).encode()
        self._send(handler, 200, body, "application/json", headers)

    @staticmethod
    def _send(handler: _Handler, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
