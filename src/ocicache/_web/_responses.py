"""
What every endpoint's response shares: the headers every answer carries,
the cache's own headers, small bodies sent whole, and conditional
requests answered (RFC 9110 §13).
"""

from __future__ import annotations

from twisted.web.iweb import IRequest
from twisted.web.server import Request

from .._fetch._result import CacheResult
from .._ops._metrics import Metrics
from .._spec._conditional import not_modified
from .._spec._reference import Digest
from .._version import __version__
from ._exchange import Exchange

__all__ = [
    "SERVER", "STALE_WARNING", "blob_headers", "cache_header", "common_headers", "count_bytes",
    "etag", "is_not_modified", "send_bytes", "send_not_modified",
    "warn_if_stale",
]

SERVER = f"ocicache/{__version__}".encode("ascii")
STALE_WARNING = b'110 - "Response is Stale"'
"""RFC 7234 §5.5.1: warn-code 110, on every answer served stale."""


def common_headers(request: IRequest) -> None:
    request.setHeader(b"server", SERVER)
    # distribution-spec "Determining Support": clients look for this header.
    request.setHeader(b"docker-distribution-api-version", b"registry/2.0")


def warn_if_stale(request: Request, result: CacheResult) -> None:
    if result == CacheResult.STALE:
        request.setHeader(b"warning", STALE_WARNING)


def etag(digest: Digest) -> bytes:
    # A digest names exactly one content: the strongest validator there is
    # (RFC 9110 §8.8.3).
    return b'"%s"' % str(digest).encode("ascii")


def cache_header(request: Request, result: CacheResult) -> None:
    # How the cache answered (hit, miss, coalesced, stale): what ocicache
    # warm reports as fetched or already there.
    request.setHeader(b"ocicache-cache", str(result).encode("ascii"))


def blob_headers(request: Request, digest: Digest) -> None:
    request.setHeader(b"docker-content-digest", str(digest).encode("ascii"))
    request.setHeader(b"etag", etag(digest))
    # RFC 9110 §14.3: say that byte ranges are served.
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"content-type", b"application/octet-stream")


def send_bytes(request: Request, exchange: Exchange, body: bytes, content_type: bytes) -> int:
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


def is_not_modified(request: Request, digest: Digest, immutable: bool) -> bool:
    """
    Whether C{request}'s preconditions (RFC 9110 §13.2.2: C{If-None-Match},
    else C{If-Modified-Since}) make it a C{304} for the content C{digest}
    names; C{immutable} when the URL itself names it by that digest.
    """
    if request.method not in (b"GET", b"HEAD"):
        return False
    headers = request.requestHeaders
    return not_modified(headers.getRawHeaders(b"if-none-match", []),
                        headers.getRawHeaders(b"if-modified-since", []), etag(digest), immutable)


def send_not_modified(request: Request, exchange: Exchange, digest: Digest) -> None:
    """
    Answer C{304 Not Modified} (RFC 9110 §15.4.5): no body, and the
    C{ETag} a C{200} would have carried.
    """
    if exchange.finished:
        return
    request.setResponseCode(304)
    request.setHeader(b"docker-content-digest", str(digest).encode("ascii"))
    request.setHeader(b"etag", etag(digest))
    request.finish()


def count_bytes(metrics: Metrics, result: CacheResult, count: int) -> None:
    """Count a small body's bytes as served from the cache or the upstream."""
    source = "upstream" if result == CacheResult.MISS else "cache"
    metrics.bytes_served.labels(source).inc(count)
