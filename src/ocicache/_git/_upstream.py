"""
The HTTP client of one git upstream: the two smart-HTTP requests, sent
with the client's own C{Authorization} (never logged, never stored) and
its C{Git-Protocol}.  Bodies are not read here: callers stream a pack or
read a ref advertisement up to a bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from treq.client import HTTPClient
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .._ops._config._proxy import DIRECT, ProxyRoutes
from .._upstream._body import discard_body, read_body
from .._upstream._errors import UpstreamUnavailable
from .._upstream._proxy import RoutedAgent
from .._upstream._tls import UpstreamTLSPolicy
from .._version import __version__
from ._config import GitUpstreamConfig
from ._errors import GitDenied, GitUpstreamFailed

__all__ = ["ADVERTISEMENT", "GitUpstream", "RESULT"]

USER_AGENT = f"git/ocicache-{__version__}".encode("ascii")
"""
git's servers look at the agent (GitHub answers smart HTTP to git/*).
"""

ADVERTISEMENT = b"application/x-git-upload-pack-advertisement"
RESULT = b"application/x-git-upload-pack-result"
REQUEST = b"application/x-git-upload-pack-request"

BODY_IDLE = 60.0
"""Seconds an upstream body may stay silent."""


class GitUpstream:
    """One C{[[git]]} upstream's requests."""

    def __init__(self, config: GitUpstreamConfig, reactor: Any, pool: HTTPConnectionPool,
                 counted: Callable[[str, str], None] = lambda kind, code: None,
                 routes: ProxyRoutes = DIRECT, proxied_pool: HTTPConnectionPool | None = None) -> None:
        """
        @param counted: told C{(kind, code)} of every upstream request
            (C{refs} or C{upload-pack}; C{error} when nothing answered).
        """
        self.config = config
        self.name = config.name
        self._reactor = reactor
        self._counted = counted
        # Direct, or through the outbound proxy ([proxy], else the environment).
        agent = RoutedAgent(reactor, routes, UpstreamTLSPolicy.for_host(config.url.host, config.tls_verify, None),
                            config.connect_timeout, pool, f"git {config.name}", proxied_pool)
        self._http = HTTPClient(agent)

    def _url(self, repo: str, *tail: str) -> str:
        # Every segment passed the route's grammar: nothing to escape.
        return str(self.config.url.encoded_url.child(*repo.split("/"), *tail).to_text())

    def url_of(self, repo: str) -> str:
        """The repository's URL upstream, for a mirror's fetch."""
        return str(self.config.url.encoded_url.child(*repo.split("/")).to_text())

    async def refs(self, repo: str, authorization: bytes | None, protocol: bytes | None) -> IResponse:
        """C{GET <repo>/info/refs?service=git-upload-pack}."""
        url = self._url(repo, "info", "refs") + "?service=git-upload-pack"
        return await self._send("refs", "GET", url, authorization, protocol, None)

    async def upload_pack(self, repo: str, authorization: bytes | None, protocol: bytes | None,
                          body: bytes) -> IResponse:
        """C{POST <repo>/git-upload-pack} with the decompressed request body."""
        url = self._url(repo, "git-upload-pack")
        return await self._send("upload-pack", "POST", url, authorization, protocol, body)

    async def _send(self, kind: str, method: str, url: str, authorization: bytes | None,
                    protocol: bytes | None, body: bytes | None) -> IResponse:
        headers = Headers({b"user-agent": [USER_AGENT]})
        if authorization is not None:
            headers.setRawHeaders(b"authorization", [authorization])
        if protocol is not None:
            headers.setRawHeaders(b"git-protocol", [protocol])
        if body is not None:
            headers.setRawHeaders(b"content-type", [REQUEST])
            headers.setRawHeaders(b"accept", [RESULT])
        try:
            response: IResponse = await self._http.request(
                method, url, headers=headers, data=body, allow_redirects=False, unbuffered=True,
                timeout=self.config.response_timeout)
        except Exception as e:
            self._counted(kind, "error")
            # The message names the host, never the headers sent.
            raise GitUpstreamFailed(f"git upstream {self.name} did not answer: {type(e).__name__}") from None
        self._counted(kind, str(response.code))
        return response

    async def refused(self, response: IResponse) -> GitDenied | GitUpstreamFailed:
        """
        What a non-200 answer means for the client, its body drained: a
        401 (with the upstream's challenge, so that git asks for
        credentials), a 403 or 404 (the repository is not theirs to read,
        or not there), or the upstream's failure.
        """
        await discard_body(response, self._reactor, BODY_IDLE)
        code = response.code
        if code == 401:
            challenge = response.headers.getRawHeaders(b"www-authenticate", [None])[0]
            return GitDenied(f"{self.name} wants credentials for this repository", 401, challenge)
        if code in (403, 404):
            return GitDenied(f"{self.name} answered {code}: no such repository, or not yours to read", code)
        return GitUpstreamFailed(f"git upstream {self.name} answered {code}")

    async def read(self, response: IResponse, limit: int) -> bytes:
        """A small body whole, or L{GitUpstreamFailed} past C{limit} bytes or when it fails."""
        try:
            body = await read_body(response, limit, self._reactor, BODY_IDLE)
        except UpstreamUnavailable as e:
            raise GitUpstreamFailed(f"git upstream {self.name}: {e}") from None
        if body is None:
            raise GitUpstreamFailed(f"git upstream {self.name} sent more than {limit} bytes of refs")
        return body
