"""
C{GET}/C{HEAD /v2/<name>/blobs/<digest>} (distribution-spec "Pulling
blobs"): the blob service's source streamed to the client, whole or one
byte range (RFC 9110 §14), by sendfile(2) where it can, or redirected to
the S3 store.
"""

from __future__ import annotations

from prometheus_client import Gauge
from twisted.web.server import Request

from .._fetch._result import CacheResult
from .._spec._errors import ErrorCode, RegistryError
from .._spec._range import Unsatisfiable, if_range_holds, parse_range
from .._spec._reference import Digest
from .._upstream._client import Upstream
from .._web._body import BodySender
from .._web._exchange import Exchange
from .._web._responses import blob_headers, cache_header, etag, is_not_modified, send_not_modified
from ._routing import Route
from ._services import Services

__all__ = ["answer_blob"]


async def answer_blob(services: Services, request: Request, exchange: Exchange, upstream: Upstream,
                      target: Route) -> None:
    digest = target.reference
    if not isinstance(digest, Digest):
        raise RuntimeError("a blob route without a digest")
    if is_not_modified(request, digest, immutable=True):
        # The client holds this very content: no bytes to send, once it is
        # known to exist and this repository may read it (a HEAD's lookup).
        await services.blobs.head(upstream, target.repo, digest)
        send_not_modified(request, exchange, digest)
        return
    if request.method == b"HEAD":
        size = await services.blobs.head(upstream, target.repo, digest)
        if not exchange.finished:
            blob_headers(request, digest)
            request.setHeader(b"content-length", b"%d" % size)
            request.finish()
        return
    if services.blobs.redirects and await _redirect_to_bucket(services, request, exchange, upstream, target, digest):
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
    blob_headers(request, digest)
    cache_header(request, lookup.result)
    start: int = 0
    end: int | None = total
    try:
        honoured = if_range_holds(request.getHeader(b"if-range"), etag(digest))
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

    server = services.config.server
    budget = services.write_budget
    bodies = BodySender(services.reactor, budget, server.sendfile, server.stall_timeout,
                        services.metrics.sendfile_bytes.inc)
    done = bodies.send(request, source, start, end, on_bytes,
                       verify=lambda stored: services.blobs.verified(stored, digest, lambda: budget.share))
    if gauge is not None:
        done.addBoth(_decrement, gauge)


async def _redirect_to_bucket(services: Services, request: Request, exchange: Exchange, upstream: Upstream,
                              target: Route, digest: Digest) -> bool:
    """
    C{[storage] redirect = true}: a blob the S3 store holds is answered
    with a C{307} to a presigned URL (RFC 9110 §15.4.8), as
    distribution's S3 driver does, so its bytes go from the store to
    the client directly.  C{False}: the store lacks it; serve it here.
    """
    location = await services.blobs.presigned(upstream, target.repo, digest)
    if location is None:
        return False
    exchange.result = CacheResult.HIT
    services.metrics.cache_requests.labels("blob", CacheResult.HIT).inc()
    if not exchange.finished:
        request.setHeader(b"docker-content-digest", str(digest).encode("ascii"))
        request.setResponseCode(307)
        request.setHeader(b"location", location.encode("ascii"))
        request.setHeader(b"content-length", b"0")
        request.finish()
    return True


def _decrement(result: object, gauge: Gauge) -> object:
    gauge.dec()
    return result
