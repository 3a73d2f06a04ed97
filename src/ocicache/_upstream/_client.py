"""
The client for one upstream registry.

It speaks just enough of the distribution-spec pull API for ocicache:
manifests, blobs and tag lists, with the registry token flow
(distribution "Token Authentication Specification") and Basic auth.
Bodies are never buffered here: callers receive the L{IResponse} and
decide whether to read a small manifest or stream a 2 GiB layer.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from attrs import frozen
from hyperlink import DecodedURL
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .._ops._config import UpstreamConfig
from .._ops._metrics import Metrics
from .._spec._auth import Challenge, parse_token_response, parse_www_authenticate
from .._version import __version__
from ._body import discard_body, read_body
from ._errors import UpstreamUnavailable, unavailability_of
from ._tls import UpstreamTLSPolicy
from ._tokens import TokenCache, TokenKey

__all__ = ["RequestKind", "Upstream", "make_pool"]

log = Logger()

USER_AGENT = f"ocicache/{__version__}".encode("ascii")
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def make_pool(reactor: Any) -> HTTPConnectionPool:
    """
    The connection pool every upstream shares.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    pool.cachedConnectionTimeout = 120
    return pool


@frozen
class _Target:
    """Where a request goes, and under which scope it is authorised."""

    url: DecodedURL
    scope: str
    kind: RequestKind = "other"


RequestKind = Literal["manifest", "blob", "tags", "token", "other"]
"""What an upstream request is for: its C{kind} label in the metrics."""

_KINDS: dict[str, RequestKind] = {"manifests": "manifest", "blobs": "blob", "tags": "tags"}


class Upstream:
    """
    One configured upstream registry.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        reactor: IReactorTime,
        pool: HTTPConnectionPool,
        tokens: TokenCache,
        connect_timeout: float = 10.0,
        response_timeout: float = 60.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._reactor = reactor
        self._metrics = metrics
        self._tokens = tokens
        self._response_timeout = response_timeout
        agent = Agent(
            reactor,
            contextFactory=UpstreamTLSPolicy(config),
            connectTimeout=connect_timeout,
            pool=pool,
        )
        self._http = HTTPClient(agent)
        # The last Bearer challenge seen: lets later requests fetch their
        # token up front instead of paying a 401 round trip each.
        self._bearer: Challenge | None = None
        self.ratelimit_remaining: int | None = None

    def _target(self, repo: str, *segments: str) -> _Target:
        # distribution-spec "Endpoints": /v2/<name>/... under the URL's path.
        # Built on the encoded URL so a digest's ":" is sent as clients send
        # it, not as %3A: every segment has passed the spec's grammar, whose
        # characters are all safe in a path.
        url = DecodedURL(self.config.url.encoded_url.child("v2", *repo.split("/"), *segments))
        ns = self.config.mirror_ns
        if ns is not None:
            # A mirror tier serves many registries: say which one this is for.
            url = url.add("ns", ns)
        return _Target(url, f"repository:{repo}:pull", _KINDS.get(segments[0], "other"))

    # -- the API ocicache uses

    async def manifest(self, method: str, repo: str, reference: str, accept: Iterable[str]) -> IResponse:
        target = self._target(repo, "manifests", reference)
        headers = {b"Accept": [", ".join(accept).encode("ascii")]}
        return await self._send(method, target, headers)

    async def blob(self, method: str, repo: str, digest: str) -> IResponse:
        target = self._target(repo, "blobs", digest)
        return await self._send(method, target, {}, follow_redirects=True)

    async def tags(self, repo: str, params: Mapping[str, str]) -> IResponse:
        target = self._target(repo, "tags", "list")
        url = target.url
        for key, value in params.items():
            url = url.add(key, value)
        return await self._send("GET", _Target(url, target.scope, target.kind), {})

    # -- the machinery

    async def _send(
        self,
        method: str,
        target: _Target,
        headers: Mapping[bytes, list[bytes]],
        follow_redirects: bool = False,
    ) -> IResponse:
        authorization = await self._authorization_for(target.scope)
        response = await self._request(method, target.url, headers, authorization, target.kind)
        if response.code == 401:
            challenges = parse_www_authenticate(
                [v.decode("latin-1") for v in response.headers.getRawHeaders(b"www-authenticate", [])]
            )
            retry = await self._answer(challenges, target.scope)
            if retry is not None:
                await self.discard(response)
                response = await self._request(method, target.url, headers, retry, target.kind)
                authorization = retry
        if follow_redirects:
            response = await self._follow(method, target.url, response, headers, authorization, target.kind)
        self._note_ratelimit(response)
        return response

    async def _follow(
        self,
        method: str,
        url: DecodedURL,
        response: IResponse,
        headers: Mapping[bytes, list[bytes]],
        authorization: bytes | None,
        kind: RequestKind = "other",
    ) -> IResponse:
        """
        Follow redirects (Docker Hub and GHCR send blob downloads to CDNs),
        never carrying C{Authorization} to another origin (RFC 9110 §15.4:
        the credentials were issued for the registry, not for the CDN).
        """
        origin = (url.scheme, url.host, url.port)
        for _ in range(MAX_REDIRECTS):
            if response.code not in _REDIRECTS:
                return response
            location = response.headers.getRawHeaders(b"location", [None])[0]
            if location is None:
                return response
            await self.discard(response)
            try:
                url = url.click(location.decode("ascii"))
            except Exception:
                raise UpstreamUnavailable(f"{self.name}: bad redirect location") from None
            if url.scheme not in ("http", "https"):
                raise UpstreamUnavailable(f"{self.name}: redirect to a non-HTTP URL")
            if (url.scheme, url.host, url.port) != origin:
                authorization = None
            response = await self._request(method, url, headers, authorization, kind)
        raise UpstreamUnavailable(f"{self.name}: more than {MAX_REDIRECTS} redirects")

    async def _request(
        self,
        method: str,
        url: DecodedURL,
        headers: Mapping[bytes, list[bytes]],
        authorization: bytes | None,
        kind: RequestKind = "other",
    ) -> IResponse:
        all_headers = Headers(dict(headers))
        all_headers.setRawHeaders(b"user-agent", [USER_AGENT])
        if authorization is not None:
            all_headers.setRawHeaders(b"authorization", [authorization])
        started = time.monotonic()
        try:
            response: IResponse = await self._http.request(
                method,
                url.to_uri().to_text(),
                headers=all_headers,
                allow_redirects=False,
                unbuffered=True,
                timeout=self._response_timeout,
            )
        except Exception as e:
            self._observe(kind, "error", started)
            # The message names the host but never the headers we sent.
            raise UpstreamUnavailable(f"{self.name}: {type(e).__name__}: {_describe(e)}",
                                      unavailability_of(e)) from None
        self._observe(kind, str(response.code), started)
        return response

    def _observe(self, kind: RequestKind, code: str, started: float) -> None:
        """
        Count one upstream request and the time until its headers came
        (C{code} is C{error} when there was no answer).
        """
        if self._metrics is not None:
            self._metrics.upstream_requests.labels(self.name, kind, code).inc()
            self._metrics.upstream_duration.labels(self.name).observe(time.monotonic() - started)

    async def _authorization_for(self, scope: str) -> bytes | None:
        if self.config.token is not None:
            # RFC 6750 §2.1: a static token, sent with every request.
            return b"Bearer " + self.config.token.encode("ascii")
        if self._bearer is not None:
            key = self._token_key(self._bearer, scope)
            token = self._tokens.get(key)
            if token is None:
                token = await self._fetch_token(self._bearer, key)
            if token is not None:
                return b"Bearer " + token.encode("ascii")
        return None

    async def _answer(self, challenges: list[Challenge], scope: str) -> bytes | None:
        """
        Credentials answering a 401's challenges, or C{None} when none can.
        """
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                self._bearer = challenge
                key = self._token_key(challenge, challenge.params.get("scope") or scope)
                token = await self._fetch_token(challenge, key)
                if token is not None:
                    return b"Bearer " + token.encode("ascii")
        credentials = self.config.credentials
        if credentials is not None and any(c.scheme == "basic" for c in challenges):
            return _basic(credentials.username, credentials.password)
        return None

    def _token_key(self, challenge: Challenge, scope: str) -> TokenKey:
        credentials = self.config.credentials
        return TokenKey(
            realm=challenge.params["realm"],
            service=challenge.params.get("service"),
            scope=scope,
            username=credentials.username if credentials else None,
        )

    async def _fetch_token(self, challenge: Challenge, key: TokenKey) -> str | None:
        """
        Get a token from the challenge's realm (distribution token spec,
        "Requesting a Token"), anonymously or with Basic credentials.
        """
        try:
            realm = DecodedURL.from_text(key.realm)
        except Exception:
            log.warn("{upstream}: ignoring a token realm that is not a URL", upstream=self.name)
            return None
        if realm.scheme not in ("http", "https"):
            log.warn("{upstream}: ignoring a token realm that is not http(s)", upstream=self.name)
            return None
        if key.service:
            realm = realm.add("service", key.service)
        if key.scope:
            realm = realm.add("scope", key.scope)
        credentials = self.config.credentials
        authorization = _basic(credentials.username, credentials.password) if credentials else None
        response = await self._request("GET", realm, {}, authorization, "token")
        body = await self.read_body(response, 1 << 20)
        if response.code != 200 or body is None:
            log.warn("{upstream}: token request answered {code}", upstream=self.name, code=response.code)
            return None
        try:
            token, expires_in = parse_token_response(body)
        except ValueError as e:
            log.warn("{upstream}: bad token response: {error}", upstream=self.name, error=str(e))
            return None
        self._tokens.put(key, token, expires_in)
        return token

    async def read_body(self, response: IResponse, limit: int) -> bytes | None:
        """
        A small body whole (a manifest, a tag list, a token): C{None} if it
        is over C{limit} bytes.
        """
        return await read_body(response, limit, self._reactor, self._response_timeout)

    async def discard(self, response: IResponse) -> None:
        """Drain a body nobody wants, so that its connection is reused."""
        await discard_body(response, self._reactor, self._response_timeout)

    def _note_ratelimit(self, response: IResponse) -> None:
        # Docker Hub: "ratelimit-remaining: 76;w=21600".
        value = response.headers.getRawHeaders(b"ratelimit-remaining", [None])[0]
        if value is not None:
            try:
                self.ratelimit_remaining = int(value.split(b";")[0])
            except ValueError:
                return
            if self._metrics is not None:
                self._metrics.ratelimit_remaining.labels(self.name).set(self.ratelimit_remaining)


def _basic(username: str, password: str) -> bytes:
    # RFC 7617 §2: base64 of user-id ":" password.
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def _describe(error: Exception) -> str:
    text = str(error)
    return text if len(text) < 200 else text[:200] + "..."
