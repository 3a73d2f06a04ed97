"""
C{GET /v2/<name>/tags/list} (distribution-spec "Listing Tags"): the query
validated, the page answered from the tag service, its C{Link} pointed
back at ocicache.
"""

from __future__ import annotations

from twisted.web.server import Request

from .._spec._errors import ErrorCode, RegistryError
from .._spec._reference import InvalidReference, validate_tag
from .._upstream._client import Upstream
from .._web._exchange import Exchange
from .._web._responses import count_bytes, send_bytes, warn_if_stale
from ._links import rewrite_link
from ._routing import Route
from ._services import Services

__all__ = ["MAX_TAGS_PAGE", "answer_tags"]

MAX_TAGS_PAGE = 10000


async def answer_tags(services: Services, request: Request, exchange: Exchange, upstream: Upstream,
                      target: Route) -> None:
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
    lookup = await services.tags.page(upstream, target.repo, params)
    page = lookup.page
    exchange.result = lookup.result
    services.metrics.cache_requests.labels("tags", lookup.result).inc()
    warn_if_stale(request, lookup.result)
    if page.link is not None:
        rewritten = rewrite_link(page.link, target, ("tags", "list"), ("n", "last"))
        if rewritten is not None:
            request.setHeader(b"link", rewritten)
    exchange.bytes = send_bytes(request, exchange, page.body, b"application/json")
    count_bytes(services.metrics, lookup.result, exchange.bytes)
