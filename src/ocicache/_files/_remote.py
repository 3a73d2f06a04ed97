"""
The HTTP client of one file remote: GET and HEAD of a path below its URL,
conditional when ocicache holds a version (RFC 9110 §13.1), with its
Basic credentials, following redirects (mirror networks send clients to
a nearby host) without carrying the credentials to another origin.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

from hyperlink import DecodedURL
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .._ops._config._proxy import DIRECT, ProxyRoutes
from .._upstream._body import discard_body
from .._upstream._errors import Unavailability, UpstreamUnavailable, unavailability_of
from .._upstream._proxy import RoutedAgent
from .._upstream._redirects import through_redirects
from .._version import __version__
from ._config import RemoteConfig
from ._paths import FilePath

__all__ = ["Remote"]

USER_AGENT = f"ocicache/{__version__}".encode("ascii")


class Remote:
    """One configured C{[[files]]} remote."""

    def __init__(self, config: RemoteConfig, reactor: IReactorTime, pool: HTTPConnectionPool,
                 observe: Callable[[str, str, float], None] = lambda remote, code, seconds: None,
                 routes: ProxyRoutes = DIRECT, proxied_pool: HTTPConnectionPool | None = None) -> None:
        """
        @param observe: told of every request sent: the remote, the status
            code (C{error} when none came) and the seconds to its headers.
        """
        self.config = config
        self.name = config.name
        self._reactor = reactor
        self._observe = observe
        # Direct, or through the outbound proxy ([proxy], else the environment).
        agent = RoutedAgent(reactor, routes, BrowserLikePolicyForHTTPS(), config.connect_timeout, pool,
                            f"files {config.name}", proxied_pool)
        self._http = HTTPClient(agent)
        credentials = config.credentials
        self._authorization = None if credentials is None else b"Basic " + base64.b64encode(
            f"{credentials.username}:{credentials.password}".encode())

    def url(self, path: FilePath) -> DecodedURL:
        # On the encoded URL: every segment passed the path grammar and is
        # quoted for a URL path here (RFC 3986 §3.3).
        return DecodedURL(self.config.url.encoded_url.child(*path.quoted))

    async def request(self, method: str, path: FilePath, headers: dict[bytes, bytes] | None = None) -> IResponse:
        """
        The remote's answer to C{method} C{path}, redirects followed; raises
        L{UpstreamUnavailable} when it does not answer.
        """
        url = self.url(path)
        all_headers = headers or {}
        response = await self._send(method, url, all_headers, self._authorization)
        return await through_redirects(self.name, url, response, self._authorization,
                                      lambda to, authorization: self._send(method, to, all_headers, authorization),
                                      self.discard)

    async def discard(self, response: IResponse) -> None:
        """Drain a body nobody wants, so that its connection is reused."""
        await discard_body(response, self._reactor, self.config.response_timeout)

    async def _send(self, method: str, url: DecodedURL, headers: dict[bytes, bytes],
                    authorization: bytes | None) -> IResponse:
        all_headers = Headers({name: [value] for name, value in headers.items()})
        all_headers.setRawHeaders(b"user-agent", [USER_AGENT])
        if authorization is not None:
            all_headers.setRawHeaders(b"authorization", [authorization])
        started = time.monotonic()
        try:
            response: IResponse = await self._http.request(
                method, url.to_uri().to_text(), headers=all_headers, allow_redirects=False, unbuffered=True,
                timeout=self.config.response_timeout)
        except Exception as e:
            self._observe(self.name, "error", time.monotonic() - started)
            # The message names the remote, never the headers sent.
            if unavailability_of(e) is Unavailability.TIMEOUT:
                raise UpstreamUnavailable(
                    f"{self.name}: no answer within {self.config.response_timeout:g}s",
                    Unavailability.TIMEOUT) from None
            raise UpstreamUnavailable(f"{self.name}: {type(e).__name__}", unavailability_of(e)) from None
        self._observe(self.name, str(response.code), time.monotonic() - started)
        return response
