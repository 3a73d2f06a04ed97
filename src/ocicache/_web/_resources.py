"""
The twisted.web resources: the distribution-spec pull API under C{/v2/}.

Each request is first authenticated (L{ocicache._identity}: before any
routing, cache lookup or upstream request; C{/v2/} itself too, since a
401 there is how clients discover that they must log in), then routed
and validated (L{ocicache._web._routing}), then answered
from the manifest or blob service.  Blob bodies are streamed by a
L{Streamer} registered as the request's push producer, so a response sends
bytes as they arrive and as fast as its own client reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote, urlencode

from attrs import define
from hyperlink import DecodedURL
from prometheus_client import Gauge
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._cache._blobs import BlobService
from .._cache._manifests import ManifestService
from .._cache._referrers import ReferrerService
from .._cache._tags import TagService
from .._fetch._result import CacheResult
from .._fetch._source import StoredFile
from .._identity import ANONYMOUS, Identity
from .._identity._authenticator import Authenticator, build_authenticator
from .._identity._errors import Unauthenticated
from .._ops._config import Config
from .._ops._logging import log_access
from .._ops._metrics import Metrics
from .._policy import AccessDenied, Decision, Policy, ReferenceKind, decide, identity_text
from .._spec._errors import ErrorCode, RegistryError
from .._spec._media_types import accepted_manifest_types
from .._spec._range import Unsatisfiable, if_range_holds, parse_range
from .._spec._reference import Digest, InvalidReference, is_registry_host, validate_tag
from .._spec._referrers import ARTIFACT_TYPE_FILTER, IMAGE_INDEX
from .._storage._pull_log import Pull
from .._upstream._client import Upstream
from .._version import __version__
from ._errors import challenged, internal_error, registry_error, render_error
from ._routing import Endpoint, Route, namespace, read_only_error, route
from ._sendfile import SendfileStreamer, can_sendfile
from ._streamer import Streamer, WriteBudget, abort_response
from ._token import TokenResource

__all__ = ["RootResource", "Services", "origin"]

log = Logger()

SERVER = f"ocicache/{__version__}".encode("ascii")
STALE_WARNING = b'110 - "Response is Stale"'
"""RFC 7234 §5.5.1: warn-code 110, on every answer served stale."""
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
    identity: Identity = ANONYMOUS
    """Who the client proved to be; what the policy decides on."""


class Services:
    """
    Everything the resources need, wired once by the service.  It is
    also the one holder of what a reload swaps (C{policy} and
    C{authenticator}): the resources read them from here on every
    request, never keep a copy.
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
        referrers: ReferrerService | None = None,
        authenticator: Authenticator | None = None,
        on_pull: Callable[[Pull], None] = lambda pull: None,
    ) -> None:
        self.reactor = reactor
        self.on_pull = on_pull
        """Told of every manifest GET answered (the pull log)."""
        self.config = config
        self.upstreams = upstreams
        self.blobs = blobs
        self.manifests = manifests
        self.tags = tags if tags is not None else TagService(
            reactor, lambda upstream: config.tag_ttl_for(upstream.config))
        self.referrers = referrers if referrers is not None else ReferrerService(
            reactor, manifests, config.cache.referrers_ttl)
        self.metrics = metrics
        # Told (digest, size) after a manifest miss, which stored it: keeps
        # the cache-size metrics current without a scan.
        self.on_manifest_stored = on_manifest_stored
        self.write_budget = WriteBudget()
        self.policy = Policy.from_config(config)
        self.authenticator = authenticator if authenticator is not None else build_authenticator(
            config.auth, reactor, deferToThread, metrics=metrics)
        """
        Read afresh for each request, never kept elsewhere: a reload
        replaces it with one built from the new configuration.
        """


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
        self.putChild(b"token", TokenResource(services))

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
        await self._authenticate(request, exchange, postpath)
        if exchange.finished:
            return  # gone while its password was checked: nothing to fetch for it
        if postpath in ([], [b""]):
            if request.method not in _READ_METHODS:
                raise read_only_error()
            try:
                ns = namespace(request.args or {})
            except RegistryError:
                ns = None  # the base endpoint answers whatever the query
            if ns is not None and self._services.config.upstream_named(ns) is not None:
                _echo_namespace(request, ns)
            # distribution-spec "Determining Support": 200 means the v2 API.
            _send_bytes(request, exchange, b"{}", b"application/json")
            return
        if request.method not in _READ_METHODS:
            exchange.route = "write"
            raise read_only_error()
        if postpath[-1] == b"":
            raise RegistryError(ErrorCode.UNSUPPORTED, "no such registry endpoint", status=404)
        target = route(postpath, request.args or {}, self._services.config)
        if target.ns is not None:
            _echo_namespace(request, target.ns)
        exchange.route = target.endpoint
        exchange.upstream = target.upstream.name
        # Before any cache lookup or upstream request, for every endpoint.
        self._authorize(request, exchange, target)
        upstream = self._services.upstreams[target.upstream.name]
        if target.endpoint == Endpoint.MANIFESTS:
            await self._manifest(request, exchange, upstream, target)
        elif target.endpoint == Endpoint.BLOBS:
            await self._blob(request, exchange, upstream, target)
        elif target.endpoint == Endpoint.REFERRERS:
            await self._referrers(request, exchange, upstream, target)
        else:
            await self._tags(request, exchange, upstream, target)

    # -- who may pull what

    def _authorize(self, request: Request, exchange: _Exchange, target: Route) -> None:
        """
        Raise L{AccessDenied} unless the policy lets C{exchange.identity}
        read the routed target.  A blob is authorized through the
        repository it is asked under; the cache then still requires that
        repository's proof that it holds the digest (L{RepoAccess}).

        An anonymous client denied where clients can log in is challenged
        instead (a 401), so that docker and podman ask for credentials.
        """
        kind = _reference_kind(target)
        if kind is None:
            decision = Decision(False, "endpoint", "no policy covers this endpoint")
        else:
            tag = target.reference if kind is ReferenceKind.TAG and isinstance(target.reference, str) else None
            decision = decide(self._services.policy, exchange.identity, target.upstream.name, target.repo,
                              kind, tag)
        if not decision.allowed:
            log.info("Denied {identity} {kind} of {upstream}/{repository}: {rule}: {reason}",
                     identity=identity_text(exchange.identity), kind=kind or target.endpoint,
                     upstream=target.upstream.name, repository=target.repo,
                     rule=decision.rule, reason=decision.reason)
            self._services.metrics.policy_denied.labels(target.upstream.name, decision.rule).inc()
            authenticator = self._services.authenticator
            if exchange.identity is ANONYMOUS and authenticator.enabled:
                raise challenged(Unauthenticated("log in to pull this repository"),
                                 authenticator.challenge(origin(request), f"repository:{target.client_name}:pull"))
            raise AccessDenied(decision)

    async def _authenticate(self, request: Request, exchange: _Exchange, postpath: list[bytes]) -> None:
        # Read once: a reload may replace it while this request waits.
        authenticator = self._services.authenticator
        try:
            exchange.identity = await authenticator.authenticate(request.getHeader(b"authorization"))
        except Unauthenticated as e:
            raise challenged(e, authenticator.challenge(origin(request), self._scope(request, postpath))) from None

    def _scope(self, request: Request, postpath: list[bytes]) -> str | None:
        """
        The scope a client needs for this request (token spec, "Requesting
        a Token": C{repository:<name>:pull}, the name as the client wrote
        it), if the request routes at all.
        """
        if postpath in ([], [b""]) or request.method not in _READ_METHODS:
            return None
        try:
            target = route(postpath, request.args or {}, self._services.config)
        except RegistryError:
            return None
        return f"repository:{target.client_name}:pull"

    # -- manifests

    async def _manifest(self, request: Request, exchange: _Exchange, upstream: Upstream, target: Route) -> None:
        reference = target.reference
        if reference is None:
            raise RuntimeError("a manifest route without a reference")
        accept = accepted_manifest_types(request.requestHeaders.getRawHeaders(b"accept", []))
        lookup = await self._services.manifests.lookup(upstream, target.repo, reference, accept)
        exchange.result = lookup.result
        self._services.metrics.cache_requests.labels("manifest", lookup.result).inc()
        if request.method == b"GET" and lookup.result != CacheResult.MISS:
            # A pull the upstream did not count (hit, coalesced, stale, or
            # revalidated with a free HEAD).
            upstream.saved_pull()
        manifest = lookup.manifest
        _cache_header(request, lookup.result)
        _warn_if_stale(request, lookup.result)
        request.setHeader(b"docker-content-digest", str(manifest.digest).encode("ascii"))
        request.setHeader(b"etag", _etag(manifest.digest))
        exchange.bytes = _send_bytes(request, exchange, manifest.body, manifest.media_type.encode("ascii"))
        self._count_bytes(lookup.result, exchange.bytes)
        if request.method == b"GET":
            # Who: the identity proven, else the client's address.
            who = (identity_text(exchange.identity) if exchange.identity is not ANONYMOUS
                   else str(getattr(request.getClientAddress(), "host", "-")))
            self._services.on_pull(Pull(self._services.reactor.seconds(), who, upstream.name, target.repo,
                                        str(reference), str(manifest.digest)))

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
        total = source.size
        if total is None:
            # The upstream streams it without a length, but every blob GET
            # announces one (distribution-spec "Pulling blobs"): ask for it.
            try:
                total = await services.blobs.head(upstream, target.repo, digest)
            except BaseException:
                source.release()
                raise
            if exchange.finished:
                source.release()
                return
        # Only now, with the bytes in hand: an error must not carry them.
        _blob_headers(request, digest)
        _cache_header(request, lookup.result)
        start: int = 0
        end: int | None = total
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
        _warn_if_stale(request, lookup.result)
        if page.link is not None:
            rewritten = _rewrite_link(page.link, target, ("tags", "list"), ("n", "last"))
            if rewritten is not None:
                request.setHeader(b"link", rewritten)
        exchange.bytes = _send_bytes(request, exchange, page.body, b"application/json")
        self._count_bytes(lookup.result, exchange.bytes)

    # -- referrers

    async def _referrers(self, request: Request, exchange: _Exchange, upstream: Upstream, target: Route) -> None:
        # distribution-spec "Listing Referrers": always 200 and an image
        # index, empty when there are none.
        subject = target.reference
        if not isinstance(subject, Digest):
            raise RuntimeError("a referrers route without a digest")
        lookup = await self._services.referrers.page(upstream, target.repo, subject, target.params)
        page = lookup.page
        exchange.result = lookup.result
        self._services.metrics.cache_requests.labels("referrers", lookup.result).inc()
        if page.filtered:
            request.setHeader(b"oci-filters-applied", ARTIFACT_TYPE_FILTER.encode("ascii"))
        if page.link is not None:
            rewritten = _rewrite_link(page.link, target, ("referrers", str(subject)),
                                      ("n", "last", ARTIFACT_TYPE_FILTER))
            if rewritten is not None:
                request.setHeader(b"link", rewritten)
        exchange.bytes = _send_bytes(request, exchange, page.body, IMAGE_INDEX.encode("ascii"))
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
        self._services.metrics.request_done(exchange.route, method, code, duration)
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
            duration, exchange.result, exchange.upstream, str(exchange.identity),
        )


_KINDS: dict[str, ReferenceKind] = {
    Endpoint.BLOBS: ReferenceKind.BLOB,
    Endpoint.TAGS: ReferenceKind.TAGS_LIST,
    "referrers": ReferenceKind.REFERRERS,
}
"""The policy's name for what each endpoint reads; manifests depend on the reference."""


def _reference_kind(target: Route) -> ReferenceKind | None:
    """What C{target} reads, or C{None} for an endpoint the policy has no kind for."""
    if target.endpoint == Endpoint.MANIFESTS:
        return ReferenceKind.DIGEST if isinstance(target.reference, Digest) else ReferenceKind.TAG
    return _KINDS.get(target.endpoint)


def origin(request: IRequest) -> str:
    """
    C{http(s)://host[:port]}, where the client reached ocicache: its
    C{Host} (RFC 9110 §7.2) when that is a plain host name, else the
    listening address.  What it builds (a realm) goes only back to the
    client that sent it.
    """
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
    if is_registry_host(host):
        return f"{scheme}://{host}"
    address = request.getHost()
    text = getattr(address, "host", "localhost")
    if ":" in text:
        text = f"[{text}]"
    port = getattr(address, "port", None)
    return f"{scheme}://{text}" + (f":{port}" if port is not None else "")


def _decrement(result: object, gauge: Gauge) -> object:
    gauge.dec()
    return result


def _warn_if_stale(request: Request, result: CacheResult) -> None:
    if result == CacheResult.STALE:
        request.setHeader(b"warning", STALE_WARNING)


def _etag(digest: Digest) -> bytes:
    # A digest names exactly one content: the strongest validator there is
    # (RFC 9110 §8.8.3).
    return b'"%s"' % str(digest).encode("ascii")


def _cache_header(request: Request, result: CacheResult) -> None:
    # How the cache answered (hit, miss, coalesced, stale): what ocicache
    # warm reports as fetched or already there.
    request.setHeader(b"ocicache-cache", str(result).encode("ascii"))


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


def _echo_namespace(request: Request, ns: str) -> None:
    # distribution-spec "Registry Proxying": a registry that honours ?ns=
    # says so, naming the namespace it served.
    request.setHeader(b"oci-namespace", ns.encode("ascii"))


def _rewrite_link(link: bytes, target: Route, tail: tuple[str, ...], keys: tuple[str, ...]) -> bytes | None:
    """
    Point the upstream's pagination C{Link} (distribution-spec "Listing
    Tags", "Listing Referrers"; RFC 8288) back at ocicache, under the name
    the client used: C{/v2/<name>/<tail>}, keeping only the query C{keys}
    ocicache validates and passes on.
    """
    text = link.decode("ascii", "replace")
    start, end = text.find("<"), text.find(">")
    if start < 0 or end < start:
        return None
    try:
        upstream_url = DecodedURL.from_text(text[start + 1:end])
    except Exception:
        return None
    # The path by hand: every segment has passed the spec's grammar, whose
    # characters are all safe in a path, and a digest's ":" must stay one
    # (an encoded %3A is refused, as clients never send it).
    path = "/".join(("", "v2", target.client_name, *tail))
    query = [(key, value) for key, value in upstream_url.query if key in keys and value is not None]
    if target.ns is not None:
        query.append(("ns", target.ns))
    if query:
        path += "?" + urlencode(query, quote_via=quote)
    return f"<{path}>{text[end + 1:]}".encode("ascii")

