"""
C{/v2/...}: the steps every request of the pull API goes through.

Each request is first authenticated (L{ocicache._identity}: before any
routing, cache lookup or upstream request; C{/v2/} itself too, since a
401 there is how clients discover that they must log in), then routed
and validated (L{ocicache._oci._routing}), then authorized by the policy,
then answered by its endpoint's module (C{_manifest_resource},
C{_blob_resource}, C{_tags_resource}, C{_referrers_resource}).  Whatever
it raises is answered through the one error map (L{ocicache._web._errors}),
and its access event and metrics are emitted once it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._identity import ANONYMOUS
from .._identity._errors import Unauthenticated
from .._policy import AccessDenied, Decision, ReferenceKind, decide, identity_text
from .._spec._errors import ErrorCode, RegistryError
from .._spec._reference import Digest, is_registry_host
from .._upstream._client import Upstream
from .._web._errors import challenged, internal_error, read_only_error, registry_error, render_error, with_challenge
from .._web._exchange import Exchange
from .._web._responses import common_headers, send_bytes
from .._web._streamer import abort_response
from ._blob_resource import answer_blob
from ._links import echo_namespace
from ._manifest_resource import answer_manifest
from ._referrers_resource import answer_referrers
from ._routing import Endpoint, Route, namespace, route
from ._services import Services
from ._tags_resource import answer_tags

__all__ = ["RegistryResource", "origin"]

log = Logger()

_READ_METHODS = (b"GET", b"HEAD")

_Answer = Callable[[Services, Request, Exchange, Upstream, Route], Awaitable[None]]

_ENDPOINTS: dict[str, _Answer] = {
    Endpoint.MANIFESTS: answer_manifest,
    Endpoint.BLOBS: answer_blob,
    Endpoint.REFERRERS: answer_referrers,
    Endpoint.TAGS: answer_tags,
}
"""Which module answers each routed endpoint."""


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
        common_headers(request)
        exchange = Exchange()
        request.notifyFinish().addBoth(exchange.ended, request, self._services.metrics)
        handling = Deferred.fromCoroutine(self._handle(request, exchange))
        handling.addErrback(self._failed, request, exchange)
        return NOT_DONE_YET

    async def _handle(self, request: Request, exchange: Exchange) -> None:
        postpath = _postpath(request)
        if postpath in ([], [b""]):
            exchange.route = "base"
        await self._authenticate(request, exchange, postpath)
        if exchange.finished:
            return  # gone while its password was checked: nothing to fetch for it
        if postpath in ([], [b""]):
            self._base(request, exchange)
            return
        if request.method not in _READ_METHODS:
            exchange.route = "write"
            raise read_only_error()
        if postpath[-1] == b"":
            raise RegistryError(ErrorCode.UNSUPPORTED, "no such registry endpoint", status=404)
        target = route(postpath, request.args or {}, self._services.config)
        if target.ns is not None:
            echo_namespace(request, target.ns)
        exchange.route = target.endpoint
        exchange.upstream = target.upstream.name
        # Before any cache lookup or upstream request, for every endpoint.
        self._authorize(request, exchange, target)
        upstream = self._services.upstreams[target.upstream.name]
        await _ENDPOINTS[target.endpoint](self._services, request, exchange, upstream, target)

    def _base(self, request: Request, exchange: Exchange) -> None:
        """C{/v2/}: distribution-spec "Determining Support": 200 means the v2 API."""
        if request.method not in _READ_METHODS:
            raise read_only_error()
        try:
            ns = namespace(request.args or {})
        except RegistryError:
            ns = None  # the base endpoint answers whatever the query
        if ns is not None and self._services.config.upstream_named(ns) is not None:
            echo_namespace(request, ns)
        send_bytes(request, exchange, b"{}", b"application/json")

    # -- who may pull what

    def _authorize(self, request: Request, exchange: Exchange, target: Route) -> None:
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

    async def _authenticate(self, request: Request, exchange: Exchange, postpath: list[bytes]) -> None:
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

    # -- the end of a request

    def _failed(self, failure: Failure, request: Request, exchange: Exchange) -> None:
        error = registry_error(failure.value) if failure.value is not None else None
        if error is None:
            log.failure("Unexpected error answering {method} {uri}", failure,
                        method=request.method.decode("ascii", "replace"),
                        uri=request.uri.decode("ascii", "replace"))
            error = internal_error()
        if error.status == 401:
            authenticator = self._services.authenticator
            error = with_challenge(error, authenticator.challenge(origin(request),
                                                                  self._scope(request, _postpath(request))))
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


def _postpath(request: Request) -> list[bytes]:
    """
    The path's segments after C{/v2/}, from the raw path, not twisted.web's
    percent-decoded postpath: the grammar has no percent-encoding, so
    C{%2d} must stay visible.
    """
    return request.path[1:].split(b"/")[len(request.prepath or []):]


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
