"""
What the operator listener's JSON endpoints (C{/admin/}, C{/pins}) share:
who may call them without a token, and how an answer is written.
"""

from __future__ import annotations

import ipaddress
import json

from twisted.web.server import Request

__all__ = ["from_loopback", "write_json"]


def from_loopback(request: Request) -> bool:
    """Whether C{request} came over a loopback address (127.0.0.0/8, ::1)."""
    host = getattr(request.getClientAddress(), "host", None)
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_json(request: Request, body: object, gone: list[bool]) -> None:
    """
    Answer C{body} as indented JSON, with its length; nothing when the
    client is C{gone} (a non-empty list: the connection was lost first).
    A C{HEAD} gets the headers alone (RFC 9110 §9.3.2).
    """
    if gone:
        return
    data = json.dumps(body, indent=2).encode("utf-8") + b"\n"
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data if request.method != b"HEAD" else b"")
    request.finish()
