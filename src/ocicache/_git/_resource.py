"""
C{/git/...}: git's smart HTTP (gitprotocol-http(5)) for the configured
C{[[git]]} upstreams, answered by L{ocicache._git}.

Ref advertisements are passed from the upstream (L{RefService}); an
upload-pack request's body is read within a bound, gunzipped within a
bound (git compresses request bodies past 1 KiB), and answered by
L{PackService}.  Kept responses go out with sendfile where the transport
allows, responses still arriving with the same streamer as blobs: a
failed or corrupt response cuts the client's connection, never ends it
cleanly.  The client's C{Authorization} goes to the upstream only: it is
never logged, and what ocicache remembers of it is a keyed hash.
"""

from __future__ import annotations

import re
import zlib
from typing import IO

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._fetch._source import Source, StoredFile
from .._ops._metrics import Metrics
from .._storage._disk import Disk
from .._web._body import BodySender
from .._web._errors import plain_answer
from .._web._exchange import Exchange
from .._web._streamer import WriteBudget, abort_response
from ._config import GitConfig
from ._errors import BadGitRequest, RequestTooLarge
from ._packs import PackAnswer, PackService
from ._refs import RefService, Who
from ._result import GitResult
from ._route import GitEndpoint, route_git
from ._upstream import ADVERTISEMENT, REQUEST, RESULT, GitUpstream

__all__ = ["GitResource", "MAX_REQUEST", "takes_body"]

log = Logger()

MAX_REQUEST = 16 << 20
"""
Bytes an upload-pack request body may have, compressed or not: wants and
haves for a few hundred thousand refs.  Past it, a 413.
"""

_PROTOCOL = re.compile(rb"[A-Za-z0-9._=:-]{1,256}")
"""C{Git-Protocol}: colon-separated C{key=value} parameters (gitprotocol-http(5))."""


def takes_body(method: bytes, target: bytes) -> int:
    """
    The bound on the request body of C{method target}: L{MAX_REQUEST}
    for an upload-pack POST, 0 (no body) for everything else.
    """
    path = target.partition(b"?")[0]
    if method == b"POST" and path.startswith(b"/git/") and path.endswith(b"/git-upload-pack"):
        return MAX_REQUEST
    return 0


_ROUTES: dict[str, str] = {GitEndpoint.REFS: "git-refs", GitEndpoint.UPLOAD_PACK: "git-upload-pack"}
_ENDPOINTS = {route: str(endpoint) for endpoint, route in _ROUTES.items()}
"""The git_requests metric's endpoint label of each route."""
"""The C{route} label of C{ocicache_http_requests_total} for each endpoint; C{git} before routing."""


class GitResource(Resource):
    """The C{/git/} tree, routed by hand (a repository path has any number of segments)."""

    isLeaf = True

    def __init__(self, config: GitConfig, upstreams: dict[str, GitUpstream], refs: RefService,
                 packs: PackService, disk: Disk, metrics: Metrics, sendfile: bool = True,
                 stall_timeout: float = 60.0, budget: WriteBudget | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._config = config
        self._upstreams = upstreams
        self._refs = refs
        self._packs = packs
        self._disk = disk
        self._metrics = metrics
        self._sendfile = sendfile
        self._stall_timeout = stall_timeout
        self._budget = budget if budget is not None else WriteBudget()

    def render(self, request: Request) -> int:
        exchange = Exchange(route="git")
        request.notifyFinish().addBoth(exchange.ended, request, self._metrics)
        handling = Deferred.fromCoroutine(self._handle(request, exchange))
        handling.addErrback(self._failed, request, exchange)
        return NOT_DONE_YET

    async def _handle(self, request: Request, exchange: Exchange) -> None:
        # The raw path: the grammar has no percent-encoding, so "%2e%2e"
        # must stay visible to it.
        segments = request.path.partition(b"?")[0].split(b"/")[2:]
        target = route_git(segments, request.method, request.args or {}, self._config)
        upstream = self._upstreams[target.upstream.name]
        exchange.upstream = upstream.name
        exchange.route = _ROUTES.get(target.endpoint, "git")
        protocol = request.getHeader(b"git-protocol")
        if protocol is not None and _PROTOCOL.fullmatch(protocol) is None:
            raise BadGitRequest("Git-Protocol is not a list of key=value parameters")
        who = self._refs.proofs.who(upstream.name, target.repo, request.getHeader(b"authorization"))
        if target.endpoint is GitEndpoint.REFS:
            await self._advertise(request, exchange, upstream, who, protocol)
        else:
            await self._upload_pack(request, exchange, upstream, who, protocol)

    async def _advertise(self, request: Request, exchange: Exchange, upstream: GitUpstream, who: Who,
                         protocol: bytes | None) -> None:
        """C{info/refs}: the upstream's advertisement (gitprotocol-http(5), "Smart Clients")."""
        advertisement = await self._refs.advertise(upstream, who, protocol)
        exchange.result = GitResult.STALE if advertisement.stale else GitResult.PASSTHROUGH
        self._count(exchange)
        if exchange.finished:
            return
        request.setHeader(b"content-type", ADVERTISEMENT)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-length", b"%d" % len(advertisement.body))
        if request.method == b"GET":
            request.write(advertisement.body)
            exchange.bytes = len(advertisement.body)
        request.finish()

    async def _upload_pack(self, request: Request, exchange: Exchange, upstream: GitUpstream, who: Who,
                           protocol: bytes | None) -> None:
        """C{git-upload-pack}: its body read and checked, then answered by L{PackService}."""
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type != REQUEST:
            raise BadGitRequest("an upload-pack request is application/x-git-upload-pack-request")
        encoding = (request.getHeader(b"content-encoding") or b"").strip().lower()
        if encoding not in (b"", b"identity", b"gzip", b"x-gzip"):
            raise BadGitRequest("an upload-pack request is sent plain or with gzip")
        content = request.content
        if content is None:
            raise BadGitRequest("an upload-pack request has a body")
        body = await self._disk.run(_read_body, content, encoding in (b"gzip", b"x-gzip"))
        answer = await self._packs.upload_pack(upstream, who, protocol, body)
        exchange.result = answer.result
        self._count(exchange)
        self._send(request, exchange, answer)

    def _send(self, request: Request, exchange: Exchange, answer: PackAnswer) -> None:
        """
        Stream C{source} to the client: with sendfile and a length when it
        is kept, chunked as it arrives otherwise (its end, or its failure
        cutting the connection, comes once it is verified).
        """
        source: Source = answer.source
        if exchange.finished:
            source.release()
            return
        request.setHeader(b"content-type", RESULT)
        request.setHeader(b"cache-control", b"no-cache")
        saved = exchange.result in (GitResult.HIT, GitResult.COALESCED)
        counter = self._metrics.git_bytes_saved.labels(exchange.upstream) if saved else None

        def on_bytes(count: int) -> None:
            exchange.bytes += count
            if counter is not None:
                counter.inc(count)

        end: int | None = None
        if isinstance(source, StoredFile):
            end = source.available
            request.setHeader(b"content-length", b"%d" % end)
        key, budget = answer.key, self._budget
        verify = None if key is None else (
            lambda stored: stored.verified(key, self._packs.corrupt, self._disk.run, lambda: budget.share))
        bodies = BodySender(self._disk.reactor, budget, self._sendfile, self._stall_timeout,
                            self._metrics.sendfile_bytes.inc)
        bodies.send(request, source, 0, end, on_bytes, verify)

    def _count(self, exchange: Exchange) -> None:
        if exchange.result is not None and exchange.upstream is not None:
            self._metrics.git_requests.labels(exchange.upstream, _ENDPOINTS[exchange.route], exchange.result).inc()

    def _failed(self, failure: Failure, request: Request, exchange: Exchange) -> None:
        answer = plain_answer(failure.value) if failure.value is not None else None
        if answer is None:
            log.failure("Unexpected error answering {method} {uri}", failure,
                        method=request.method.decode("ascii", "replace"),
                        uri=request.uri.decode("ascii", "replace"))
        if exchange.finished:
            return
        if request.startedWriting:
            abort_response(request)
            return
        status, message, headers = (500, "internal error", ()) if answer is None else (
            answer.status, answer.message, answer.headers)
        body = message.encode("utf-8", "replace") + b"\n"
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        for name, value in headers:
            request.setHeader(name, value)
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


def _read_body(content: IO[bytes], gzipped: bool) -> bytes:
    """
    The request body, gunzipped, within L{MAX_REQUEST}: in the disk
    thread (it may be a temp file, and inflating is CPU work).
    """
    content.seek(0)
    raw = content.read(MAX_REQUEST + 1)
    if len(raw) > MAX_REQUEST:
        raise RequestTooLarge(f"an upload-pack request may have at most {MAX_REQUEST} bytes")
    if not gzipped:
        return raw
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, MAX_REQUEST + 1)
    except zlib.error:
        raise BadGitRequest("the request body is not valid gzip") from None
    if len(body) > MAX_REQUEST or inflater.unconsumed_tail:
        raise RequestTooLarge(f"an upload-pack request may inflate to at most {MAX_REQUEST} bytes")
    if not inflater.eof:
        raise BadGitRequest("the request body's gzip stream is cut short")
    return body
