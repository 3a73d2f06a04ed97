"""
The daemon's listeners: endpoint strings made into listening services,
with ocicache's accept backlog, and what a listen address says about who
can reach it.
"""

from __future__ import annotations

import ipaddress
import re

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory

from .._ops._reactor import Reactor
from .._web._bulk_tls import BulkTLSReactor

__all__ = ["LISTEN_BACKLOG", "ListenError", "beyond_loopback", "listener", "plain_and_reachable", "with_backlog"]


class ListenError(ValueError):
    """A listen address is not a valid endpoint string."""


def listener(reactor: Reactor, description: str, factory: IProtocolFactory) -> StreamServerEndpointService:
    """
    A service listening on C{description}; start-up fails, not just logs,
    when the port cannot be bound.
    """
    # HTTPS through ocicache's TLS transport (fewer trips into OpenSSL).
    listening = BulkTLSReactor(reactor) if description.split(":", 1)[0].lower() == "ssl" else reactor
    try:
        endpoint = serverFromString(listening, with_backlog(description))
    except Exception as e:
        raise ListenError(f"{description!r} is not a valid listen endpoint: {e}") from None
    service = StreamServerEndpointService(endpoint, factory)
    # Twisted offers no public switch for this: _raiseSynchronously is
    # StreamServerEndpointService's own (documented in its source), and
    # this is the daemon's one use of a private Twisted name.
    service._raiseSynchronously = True
    return service


LISTEN_BACKLOG = 1024
"""
The accept queue of a TCP or TLS listener that names none (Twisted's own
default is 50): a build farm's burst of connections waits in the kernel
rather than being refused or retried after a second (the kernel caps it at
C{net.core.somaxconn}).
"""


def with_backlog(description: str) -> str:
    """C{description} with ocicache's listen backlog, unless it sets one."""
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def plain_and_reachable(description: str) -> bool:
    """Whether a listener is plain TCP (no TLS) and reachable beyond loopback."""
    return description.split(":", 1)[0].lower() in ("tcp", "tcp6") and beyond_loopback(description)


_INTERFACE = re.compile(r"(?:^|:)interface=((?:\\:|[^:])*)")


def beyond_loopback(description: str) -> bool:
    """
    Whether a TCP or TLS listener (Twisted endpoint syntax) takes
    connections from beyond loopback: no C{interface=} (every address),
    or one outside 127.0.0.0/8 and ::1.  A UNIX socket is local; a socket
    from systemd is not judged (its address is the unit's).
    """
    kind = description.split(":", 1)[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    match = _INTERFACE.search(description)
    if match is None:
        return True
    interface = match.group(1).replace("\\:", ":")
    if interface == "localhost":
        return False
    try:
        return not ipaddress.ip_address(interface).is_loopback
    except ValueError:
        # A host name: judged by what it may resolve to, so beyond.
        return True
