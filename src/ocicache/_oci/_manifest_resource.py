"""
C{GET}/C{HEAD /v2/<name>/manifests/<reference>} (distribution-spec
"Pulling manifests"): answered from the manifest service.
"""

from __future__ import annotations

from twisted.web.server import Request

from .._fetch._result import CacheResult
from .._identity import ANONYMOUS
from .._policy import identity_text
from .._spec._media_types import accepted_manifest_types
from .._spec._reference import Digest
from .._storage._pull_log import Pull
from .._upstream._client import Upstream
from .._web._exchange import Exchange
from .._web._responses import (
    cache_header,
    count_bytes,
    etag,
    is_not_modified,
    send_bytes,
    send_not_modified,
    warn_if_stale,
)
from ._routing import Route
from ._services import Services

__all__ = ["answer_manifest"]


async def answer_manifest(services: Services, request: Request, exchange: Exchange, upstream: Upstream,
                          target: Route) -> None:
    reference = target.reference
    if reference is None:
        raise RuntimeError("a manifest route without a reference")
    accept = accepted_manifest_types(request.requestHeaders.getRawHeaders(b"accept", []))
    lookup = await services.manifests.lookup(upstream, target.repo, reference, accept)
    exchange.result = lookup.result
    services.metrics.cache_requests.labels("manifest", lookup.result).inc()
    if request.method == b"GET" and lookup.result != CacheResult.MISS:
        # A pull the upstream did not count (hit, coalesced, stale, or
        # revalidated with a free HEAD).
        upstream.saved_pull()
    manifest = lookup.manifest
    cache_header(request, lookup.result)
    warn_if_stale(request, lookup.result)
    if is_not_modified(request, manifest.digest, immutable=isinstance(reference, Digest)):
        send_not_modified(request, exchange, manifest.digest)
        return
    request.setHeader(b"docker-content-digest", str(manifest.digest).encode("ascii"))
    request.setHeader(b"etag", etag(manifest.digest))
    exchange.bytes = send_bytes(request, exchange, manifest.body, manifest.media_type.encode("ascii"))
    count_bytes(services.metrics, lookup.result, exchange.bytes)
    if request.method == b"GET":
        # The pull log: the identity proven, else the client's address.
        who = (identity_text(exchange.identity) if exchange.identity is not ANONYMOUS
               else str(getattr(request.getClientAddress(), "host", "-")))
        services.on_pull(Pull(services.reactor.seconds(), who, upstream.name, target.repo, str(reference),
                              str(manifest.digest)))
