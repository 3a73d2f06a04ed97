"""
The client side of the internal endpoint (L{ocicache._fleet._internal}):
one node asking another for a blob's body, or another kind of entry's.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .._spec._reference import Digest
from .._upstream._body import discard_body

__all__ = ["CONNECT_TIMEOUT", "NOT_YET", "PeerClient"]

log = Logger()

CONNECT_TIMEOUT = 5.0
"""Seconds a peer may take to answer with its headers."""

NOT_YET = 409
"""The peer holds the fill lock and has not started its download yet."""


class PeerClient:
    def __init__(self, reactor: IReactorTime, pool: HTTPConnectionPool, secret: str) -> None:
        self._reactor = reactor
        self._agent = Agent(reactor, pool=pool, connectTimeout=CONNECT_TIMEOUT)
        self._headers = Headers({b"authorization": [f"Bearer {secret}".encode()]})

    async def blob(self, peer_url: str, digest: Digest, area: str = "blobs") -> IResponse | int:
        """
        C{digest}'s body (an entry of C{area}: C{blobs}, C{git}) from the
        peer at C{peer_url} (a 200 response, to be delivered), or why not:
        the peer's status, or 0 when it could not be reached.
        """
        url = f"{peer_url.rstrip('/')}/{area}/{digest}".encode("ascii")
        asked: Deferred[IResponse] = self._agent.request(b"GET", url, self._headers)
        asked.addTimeout(CONNECT_TIMEOUT, self._reactor)
        try:
            response = await asked
        except Exception as e:  # refused, reset, timed out: not reachable
            log.debug("Peer {peer} unreachable: {error}", peer=peer_url, error=repr(e))
            return 0
        if response.code == 200:
            return response
        await discard_body(response, self._reactor, CONNECT_TIMEOUT)
        return int(response.code)
