"""
The twisted.web resources: the distribution-spec pull API under C{/v2/}.

Each request is routed and validated (L{ocicache._web._routing}), then answered
from the manifest or blob service.  Blob bodies are streamed by a
L{Streamer} registered as the request's push producer, so a response sends
bytes as they arrive and as fast as its own client reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from attrs import define
from hyperlink import DecodedURL
from prometheus_client import Gauge
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._cache._blobs import BlobService
from .._cache._manifests import ManifestService
from .._cache._result import CacheResult
from .._cache._source import StoredFile
from .._cache._tags import TagService
from .._ops._config import Config
from .._ops._logging import log_access
from .._ops._metrics import Metrics
from .._spec._errors import ErrorCode, RegistryError
from .._spec._media_types import accepted_manifest_types
from .._spec._range import Unsatisfiable, if_range_holds, parse_range
from .._spec._reference import Digest, InvalidReference, validate_tag
from .._upstream._client import Upstream
from .._version import __version__
from ._errors import internal_error, registry_error, render_error
from ._routing import Endpoint, Route, read_only_error, route
from ._sendfile import SendfileStreamer, can_sendfile
from ._streamer import Streamer, WriteBudget, abort_response

__all__ = ["RootResource", "Services"]

log = Logger()

SERVER = f"ocicache/{__version__}".encode("ascii")
MAX_TAGS_PAGE = 10000
_READ_METHODS = (b"GET", b"HEAD")


@define
class _Exchange:
    """What one request did, for its access event and its metrics."""

    route: str = "other"
    result: CacheResult | None = None
    upstream: str | None = None
    bytes: int = 0
    finished: bool = False
    """Whether the response ended, or the client went away."""


class Services:
    """
    Everything the resources need, wired once by the service.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: Config,
        upstreams: dict[str, Upstream],
        blobs: BlobService,
        manifests: ManifestService,
        metrics: Metrics,
        on_manifest_stored: Callable[[str, int], None] = lambda digest, size: None,
        tags: TagService | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.upstreams = upstreams
        self.blobs = blobs
        self.manifests = manifests
        self.tags = tags if tags is not None else TagService(
            reactor, lambda upstream: config.tag_ttl_for(upstream.config))
        self.metrics = metrics
        # Told (digest, size) after a manifest miss, which stored it: keeps
        # the cache-size metrics current without a scan.
        self.on_manifest_stored = on_manifest_stored
        self.write_budget = WriteBudget()


def _common_headers(request: IRequest) -> None:
    request.setHeader(b"server", SERVER)
    # distribution-spec "Determining Support": clients look for this header.
    request.setHeader(b"docker-distribution-api-version", b"registry/2.0")


class _ErrorResource(Resource):
    """Answers every method with one registry error."""

    isLeaf = True

    def __init__(self, error: RegistryError) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._error = error

    def render(self, request: IRequest) -> bytes:
        _common_headers(request)
        return render_error(request, self._error)


class RootResource(Resource):
    """
    C{/}: only C{/v2/} lives here; everything else is a JSON 404, never an
    HTML page.
    """

    def __init__(self, services: Services) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.putChild(b"v2", RegistryResource(services))

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return _ErrorResource(RegistryError(ErrorCode.UNSUPPORTED, "not a registry endpoint", status=404))

    def render(self, request: IRequest) -> bytes:
        return self.getChild(b"", request).render(request)  # type: ignore[no-any-return]


class RegistryResource(Resource):
    """
    C{/v2/...}: routed by hand, since a repository name spans any number of
    path segments.
    """

    isLeaf = True

    def __init__(self, services: Services) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._services = services

    def render(self, request: Request) -> int | bytes:
        _common_headers(request)
        exchange = _Exchange()
        started = time.monotonic()
        request.notifyFinish().addBoth(self._finished, request, exchange, started)
        handling = Deferred.fromCoroutine(self._handle(request, exchange))
        handling.addErrback(self._failed, request, exchange)
        return NOT_DONE_YET

    async def _handle(self, request: Request, exchange: _Exchange) -> None:
        # The raw path, not twisted.web's percent-decoded postpath: the
        # grammar has no percent-encoding, so "%2d" must stay visible here.
        postpath = request.path[1:].split(b"/")[len(request.prepath or []):]
        if postpath in ([], [b""]):
            exchange.route = "base"
            if request.method not in _READ_METHODS:
                raise read_only_error()
            # distribution-spec "Determining Support": 200 means the v2 API.
            _send_bytes(request, exchange, b"{}", b"application/json")
            return
        if request.method not in _READ_METHODS:
            exchange.route = "write"
            raise read_only_error()
        if postpath[-1] == b"":
            raise RegistryError(ErrorCode.UNSUPPORTED, "no such registry endpoint", status=404)
        target = route(postpath, request.args or {}, self._services.config)
        exchange.route = target.endpoint
        exchange.upstream = target.upstream.name
        upstream = self._services.upstreams[target.upstream.name]
        if target.endpoint == Endpoint.MANIFESTS:
            await self._manifest(request, exchange, upstream, target)
        elif target.endpoint == Endpoint.BLOBS:
            await self._blob(request, exchange, upstream, target)
        else:
            await self._tags(request, exchange, upstream, target)

    # -- manifests

    async def _manifest(self, request: Request, exchange: _Exchange, upstream: Upstream, target: Route) -> None:
        reference = target.reference
        if reference is None:
            raise RuntimeError("a manifest route without a reference")
        accept = accepted_manifest_types(request.requestHeaders.getRawHeaders(b"accept", []))
        lookup = await self._services.manifests.lookup(upstream, target.repo, reference, accept)
        exchange.result = lookup.result
        self._services.metrics.cache_requests.labels("manifest", lookup.result).inc()
        manifest = lookup.manifest
        request.setHeader(b"docker-content-digest", str(manifest.digest).encode("ascii"))
        request.setHeader(b"etag", _etag(manifest.digest))
        exchange.bytes = _send_bytes(request, exchange, manifest.body, manifest.media_type.encode("ascii"))
        self._count_bytes(lookup.result, exchange.bytes)

    # -- blobs

    async def _blob(self, request: Request, exchange: _Exchange, upstream: Upstream, target: Route) -> None:
        digest = target.reference
        if not isinstance(digest, Digest):
            raise RuntimeError("a blob route without a digest")
        services = self._services
        if request.method == b"HEAD":
            size = await services.blobs.head(upstream, target.repo, digest)
            if not exchange.finished:
                _blob_headers(request, digest)
                request.setHeader(b"content-length", b"%d" % size)
                request.finish()
            return
        if services.blobs.redirects and await self._redirect_to_bucket(request, exchange, upstream, target, digest):
            return
        lookup = await services.blobs.lookup(upstream, target.repo, digest,
                                             ranged=request.getHeader(b"range") is not None)
        exchange.result = lookup.result
        services.metrics.cache_requests.labels("blob", lookup.result).inc()
        source = lookup.source
        if exchange.finished:
            # The client went away while we looked.
            source.release()
            return
        # Only now, with the bytes in hand: an error must not carry them.
        _blob_headers(request, digest)
        total = source.size
        start: int = 0
        end: int | None = total
        if total is not None:
            try:
                honoured = if_range_holds(request.getHeader(b"if-range"), _etag(digest))
                wanted = parse_range(request.getHeader(b"range"), total) if honoured else None
            except Unsatisfiable:
                source.release()
                # RFC 9110 §15.5.17: 416 with the complete length.
                raise RegistryError(
                    ErrorCode.RANGE_INVALID, "the requested range is not satisfiable",
                    headers=((b"content-range", b"bytes */%d" % total),),
                ) from None
            if wanted is not None:
                request.setResponseCode(206)
                request.setHeader(b"content-range", wanted.content_range(total))
                start, end = wanted.start, wanted.end
            request.setHeader(b"content-length", b"%d" % (total - start if end is None else end - start))
        gauge = services.metrics.waiting_clients if lookup.result != CacheResult.HIT else None
        if gauge is not None:
            gauge.inc()
        source_label = "upstream" if lookup.result == CacheResult.MISS else "cache"
        served = services.metrics.bytes_served.labels(source_label)

        def on_bytes(count: int) -> None:
            exchange.bytes += count
            served.inc(count)

        done: Deferred[int]
        server = services.config.server
        if server.sendfile and end is not None and can_sendfile(request, end):
            by_sendfile = services.metrics.sendfile_bytes

            def on_sent(count: int) -> None:
                on_bytes(count)
                by_sendfile.inc(count)

            done = SendfileStreamer(request, source, start, end, services.reactor, on_sent,
                                    server.stall_timeout).start()
        else:
            if isinstance(source, StoredFile) and start == 0 and end == total:
                # Through Python anyway: hash the bytes at rest on the way.
                source = source.verified(digest, services.blobs.corrupt)
            done = Streamer(request, source, start, end, services.reactor, on_bytes, services.write_budget).start()
        if gauge is not None:
            done.addBoth(_decrement, gauge)

    async def _redirect_to_bucket(self, request: Request, exchange: _Exchange, upstream: Upstream,
                                  target: Route, digest: Digest) -> bool:
        """
        C{[storage] redirect = true}: a blob the S3 store holds is answered
        with a C{307} to a presigned URL (RFC 9110 §15.4.8), as
        distribution's S3 driver does, so its bytes go from the store to
        the client directly.  C{False}: the store lacks it; serve it here.
        """
        location = await self._services.blobs.presigned(upstream, target.repo, digest)
        if location is None:
            return False
        exchange.result = CacheResult.HIT
        self._services.metrics.cache_requests.labels("blob", CacheResult.HIT).inc()
        if not exchange.finished:
            request.setHeader(b"docker-content-digest", str(digest).encode("ascii"))
            request.setResponseCode(307)
            request.setHeader(b"location", location.encode("ascii"))
            request.setHeader(b"content-length", b"0")
            request.finish()
        return True

    # -- tags

    async def _tags(self, request: Request, exchange: _Exchange, upstream: Upstream, target: Route) -> None:
        # distribution-spec "Listing Tags": ?n=<integer>&last=<tag>.
        params: dict[str, str] = {}
        args = request.args or {}
        for key in args:
            if key not in (b"n", b"last", b"ns"):
                raise RegistryError(ErrorCode.UNSUPPORTED, "unknown query parameter for tags/list")
        n_values = args.get(b"n")
        if n_values is not None:
            text = n_values[0].decode("ascii", "replace") if len(n_values) == 1 else ""
            if not text.isdigit() or not 0 < int(text) <= MAX_TAGS_PAGE:
                raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID,
                                    f"n must be an integer from 1 to {MAX_TAGS_PAGE}")
            params["n"] = str(int(text))
        last_values = args.get(b"last")
        if last_values is not None:
            try:
                if len(last_values) != 1:
                    raise InvalidReference("give last= once")
                params["last"] = validate_tag(last_values[0].decode("ascii"))
            except (InvalidReference, UnicodeDecodeError):
                raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, "last must be a valid tag") from None
        lookup = await self._services.tags.page(upstream, target.repo, params)
        page = lookup.page
        exchange.result = lookup.result
        self._services.metrics.cache_requests.labels("tags", lookup.result).inc()
        if page.link is not None:
            rewritten = _rewrite_link(page.link, target)
            if rewritten is not None:
                request.setHeader(b"link", rewritten)
        exchange.bytes = _send_bytes(request, exchange, page.body, b"application/json")
        self._count_bytes(lookup.result, exchange.bytes)

    # -- the end of a request

    def _count_bytes(self, result: CacheResult, count: int) -> None:
        source = "upstream" if result == CacheResult.MISS else "cache"
        self._services.metrics.bytes_served.labels(source).inc(count)

    def _failed(self, failure: Failure, request: Request, exchange: _Exchange) -> None:
        error = registry_error(failure.value) if failure.value is not None else None
        if error is None:
            log.failure("Unexpected error answering {method} {uri}", failure,
                        method=request.method.decode("ascii", "replace"),
                        uri=request.uri.decode("ascii", "replace"))
            error = internal_error()
        if exchange.finished:
            return  # the client went away: nobody to tell
        if request.startedWriting:
            # Too late for an error body: cut the response so the client
            # sees it incomplete.
            abort_response(request)
            return
        body = render_error(request, error)
        request.write(body)
        request.finish()

    def _finished(self, result: None | Failure, request: Request, exchange: _Exchange, started: float) -> None:
        exchange.finished = True
        duration = time.monotonic() - started
        method = request.method.decode("ascii", "replace")
        code = request.code if result is None else 499
        metrics = self._services.metrics
        metrics.http_requests.labels(exchange.route, method if method in ("GET", "HEAD") else "other",
                                     str(code)).inc()
        metrics.http_duration.labels(exchange.route).observe(duration)
        if exchange.route == Endpoint.MANIFESTS and exchange.result == CacheResult.MISS and code == 200:
            digest = request.responseHeaders.getRawHeaders(b"docker-content-digest", [None])[0]
            length = request.responseHeaders.getRawHeaders(b"content-length", [b""])[0]
            if digest is not None and length.isdigit():
                self._services.on_manifest_stored(digest.decode("ascii", "replace"), int(length))
        log_access(
            method, request.uri.decode("ascii", "replace"), code,
            # A small body is finished (and this called) before the handler
            # records its size; the request itself counted the bytes.
            max(exchange.bytes, request.sentLength),
            duration, exchange.result, exchange.upstream,
        )


def _decrement(result: object, gauge: Gauge) -> object:
    gauge.dec()
    return result


def _etag(digest: Digest) -> bytes:
    # A digest names exactly one content: the strongest validator there is
    # (RFC 9110 §8.8.3).
    return b'"%s"' % str(digest).encode("ascii")


def _blob_headers(request: Request, digest: Digest) -> None:
    request.setHeader(b"docker-content-digest", str(digest).encode("ascii"))
    request.setHeader(b"etag", _etag(digest))
    # RFC 9110 §14.3: say that byte ranges are served.
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"content-type", b"application/octet-stream")


def _send_bytes(request: Request, exchange: _Exchange, body: bytes, content_type: bytes) -> int:
    """
    Answer with a small body; nothing at all when the client already went
    away (twisted.web refuses a finish after the connection is lost).
    """
    if exchange.finished:
        return 0
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    sent = 0
    if request.method != b"HEAD":
        request.write(body)
        sent = len(body)
    request.finish()
    return sent


def _rewrite_link(link: bytes, target: Route) -> bytes | None:
    """
    Point the upstream's pagination C{Link} (distribution-spec "Listing
    Tags", RFC 8288) back at ocicache, under the name the client used.
    """
    text = link.decode("ascii", "replace")
    start, end = text.find("<"), text.find(">")
    if start < 0 or end < start:
        return None
    try:
        upstream_url = DecodedURL.from_text(text[start + 1:end])
    except Exception:
        return None
    ours = DecodedURL.from_text("/").child("v2", *target.client_name.split("/"), "tags", "list")
    for key, value in upstream_url.query:
        if key in ("n", "last") and value is not None:
            ours = ours.add(key, value)
    if target.ns is not None:
        ours = ours.add("ns", target.ns)
    return f"<{ours.to_uri().to_text()}>{text[end + 1:]}".encode("ascii")

