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

from .serving import LoopbackServer, send

__all__ = ["IMAGE_INDEX", "ReferrersUpstream"]

IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"


class ReferrersUpstream:
    def __init__(self, port: int | None = None) -> None:
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
        # HTTP/1.0: once stopped nothing is answered, not even on a
        # connection kept open.
        self._server = LoopbackServer(self._answer, port, one_request_per_connection=True, name="referrers")

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> ReferrersUpstream:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def count(self, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for path, _ in self._seen if path_contains in path)

    def queries(self, path_contains: str = "") -> list[dict[str, list[str]]]:
        """The query of each request seen whose path holds C{path_contains}."""
        with self._lock:
            return [query for path, query in self._seen if path_contains in path]

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        path = urllib.parse.unquote(parts.path)
        query = urllib.parse.parse_qs(parts.query)
        with self._lock:
            self._seen.append((path, query))
        time.sleep(self.delay)
        if self.status is not None:
            send(handler, self.status, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
                       "application/json")
            return
        if path == "/v2/":
            send(handler, 200, b"{}", "application/json")
            return
        if path.endswith("/tags/list") and path.removeprefix("/v2/")[:-len("/tags/list")] in self.tags:
            self._tags(handler, path.removeprefix("/v2/")[:-len("/tags/list")], query)
            return
        name, sep, subject = path.removeprefix("/v2/").rpartition("/referrers/")
        if not sep:
            send(handler, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}', "application/json")
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
        send(handler, 200, body, self.listing_type, headers)

    def _tags(self, handler: http.server.BaseHTTPRequestHandler, name: str, query: dict[str, list[str]]) -> None:
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
        send(handler, 200, body, "application/json", headers)

