"""
The C{Host} request header's grammar (RFC 9110 §7.2, RFC 3986 §3.2.2):
C{Host = uri-host [ ":" port ]}.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["is_host_field"]

# RFC 3986 §3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ),
# so an empty value is one too (RFC 9112 §3.2: what a client sends when the
# target URI has no authority).  An IPv4address is a reg-name as well.
_REG_NAME = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
# IP-literal = "[" ( IPv6address / IPvFuture ) "]"; the IPv6 form is
# checked by ipaddress below.
_IP_LITERAL = rb"\[(?P<literal>[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
_HOST = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _REG_NAME + rb")(?::[0-9]*)?")


def is_host_field(value: bytes) -> bool:
    """Whether C{value} is a well-formed C{Host} field value."""
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    literal = match.group("literal")
    if literal is None or literal[:1] in (b"v", b"V"):
        return True
    try:
        ipaddress.IPv6Address(literal.decode("ascii"))
    except ValueError:
        return False
    return True
