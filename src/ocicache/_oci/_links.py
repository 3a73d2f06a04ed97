"""
The registry's answers that point back at ocicache: the C{?ns=} a client
sent, echoed, and the upstream's pagination links (RFC 8288) rewritten to
ocicache's own route.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from hyperlink import DecodedURL
from twisted.web.server import Request

from ._routing import Route

__all__ = ["echo_namespace", "rewrite_link"]


def echo_namespace(request: Request, ns: str) -> None:
    # distribution-spec "Registry Proxying": a registry that honours ?ns=
    # says so, naming the namespace it served.
    request.setHeader(b"oci-namespace", ns.encode("ascii"))


def rewrite_link(link: bytes, target: Route, tail: tuple[str, ...], keys: tuple[str, ...]) -> bytes | None:
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
