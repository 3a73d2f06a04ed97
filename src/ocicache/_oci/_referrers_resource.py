"""
C{GET /v2/<name>/referrers/<digest>} (distribution-spec "Listing
Referrers"): always 200 and an image index, empty when there are none.
"""

from __future__ import annotations

from twisted.web.server import Request

from .._spec._reference import Digest
from .._spec._referrers import ARTIFACT_TYPE_FILTER, IMAGE_INDEX
from .._upstream._client import Upstream
from .._web._exchange import Exchange
from .._web._responses import count_bytes, send_bytes
from ._links import rewrite_link
from ._routing import Route
from ._services import Services

__all__ = ["answer_referrers"]


async def answer_referrers(services: Services, request: Request, exchange: Exchange, upstream: Upstream,
                           target: Route) -> None:
    subject = target.reference
    if not isinstance(subject, Digest):
        raise RuntimeError("a referrers route without a digest")
    lookup = await services.referrers.page(upstream, target.repo, subject, target.params)
    page = lookup.page
    exchange.result = lookup.result
    services.metrics.cache_requests.labels("referrers", lookup.result).inc()
    if page.filtered:
        request.setHeader(b"oci-filters-applied", ARTIFACT_TYPE_FILTER.encode("ascii"))
    if page.link is not None:
        rewritten = rewrite_link(page.link, target, ("referrers", str(subject)),
                                 ("n", "last", ARTIFACT_TYPE_FILTER))
        if rewritten is not None:
            request.setHeader(b"link", rewritten)
    exchange.bytes = send_bytes(request, exchange, page.body, IMAGE_INDEX.encode("ascii"))
    count_bytes(services.metrics, lookup.result, exchange.bytes)
