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
import math
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

from attrs import evolve, field, frozen
from hyperlink import DecodedURL
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .._ops._clock import Stopwatch
from .._ops._config import Credentials, UpstreamConfig
from .._ops._config._proxy import DIRECT, ProxyRoutes
from .._ops._metrics import Metrics
from .._spec._auth import Challenge, parse_token_response, parse_www_authenticate
from .._spec._referrers import IMAGE_INDEX
from .._version import __version__
from ._body import discard_body, read_body
from ._circuit import Circuit, status_error
from ._credentials import CredentialSource, credentials_for
from ._errors import (
    Unavailability,
    UpstreamDenied,
    UpstreamRateLimited,
    UpstreamUnavailable,
    describe,
    unavailability_of,
)
from ._proxy import RoutedAgent
from ._ratelimit import Quota, parse_ratelimit, parse_retry_after
from ._redirects import through_redirects
from ._refusals import Refusals
from ._tls import UpstreamTLSPolicy
from ._tokens import TokenCache, TokenKey

__all__ = ["RequestKind", "Upstream", "make_pool"]

log = Logger()

USER_AGENT = f"ocicache/{__version__}".encode("ascii")


def make_pool(reactor: IReactorTime) -> HTTPConnectionPool:
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


class SharedPauses(Protocol):
    """
    Until when each upstream is left alone, as every process on the host
    knows it (L{ocicache._storage._pause_files}): what a 429 told one
    process, the others obey.  Both calls are quick and never wait on a
    disk; C{OSError} when the files cannot be used.
    """

    def until(self, name: str) -> float | None: ...

    def pause(self, name: str, until: float) -> None: ...


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
        metrics: Metrics | None = None,
        routes: ProxyRoutes = DIRECT,
        pauses: SharedPauses | None = None,
    ) -> None:
        """@param pauses: the pauses every process on the host obeys (C{None}: this process's own)."""
        self.config = config
        self._pauses = pauses
        self.name = config.name
        self.credentials: CredentialSource = credentials_for(config, reactor)
        """Read on every use, so a reload may replace it."""
        self._reactor = reactor
        self._metrics = metrics
        self._tokens = tokens
        self._response_timeout = config.response_timeout
        # Direct, or through the outbound proxy that routes choose per URL:
        # the registry, its token realm and its CDN redirects alike.
        self._agent = RoutedAgent(reactor, routes, UpstreamTLSPolicy(config), config.connect_timeout, pool,
                                  config.name)
        self._http = HTTPClient(self._agent)
        # The last Bearer challenge seen: lets later requests fetch their
        # token up front instead of paying a 401 round trip each.
        self._bearer: Challenge | None = None
        # Refusals of our credentials (issue 19: login storms): by the
        # token server, for every scope; by the registry, per scope.
        self._refusals = Refusals(reactor)
        # Token requests in flight, each joined by every request that
        # needs the same token meanwhile: one login, not one per client.
        self._logins: dict[TokenKey, list[Deferred[str | None]]] = {}
        self.quota = Quota()
        """What the upstream's responses said of its pull quota (L{note_quota})."""
        self.circuit = Circuit(self.name, reactor, metrics, offline=config.offline)
        """Its circuit breaker and offline switch: every exchange asks it first."""
        self._below_floor = False
        self._limited = False
        self._chain_checked = False
        # Pull-equivalents (manifest GETs, as Docker Hub counts them) not
        # yet written to the metadata database: see pulls and flushed.
        self._made = 0
        self._saved = 0
        if metrics is not None:
            metrics.ratelimit_limited.labels(self.name).set_function(
                lambda: 1 if self.quota.limited_for(self._reactor.seconds()) > 0 else 0)

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

    def close(self) -> Deferred[None]:
        """Close the connections this upstream keeps through a proxy (the shared pool is its owner's)."""
        return self._agent.close()

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

    async def referrers(self, repo: str, digest: str, params: Iterable[tuple[str, str]]) -> IResponse:
        """
        The referrers of C{digest} (distribution-spec "Listing Referrers"),
        with the client's C{artifactType} filter and page.
        """
        target = self._target(repo, "referrers", digest)
        url = target.url
        for key, value in params:
            url = url.add(key, value)
        headers = {b"Accept": [IMAGE_INDEX.encode("ascii")]}
        return await self._send("GET", _Target(url, target.scope, target.kind), headers)

    # -- the machinery

    async def _send(
        self,
        method: str,
        target: _Target,
        headers: Mapping[bytes, list[bytes]],
        follow_redirects: bool = False,
    ) -> IResponse:
        """
        One exchange, if the circuit lets it begin: each call in it gives
        the circuit a verdict (L{_request}), and a final 401 is one too.
        """
        probe = self.circuit.admit()
        try:
            response = await self._exchange(method, target, headers, follow_redirects)
            if response.code == 401:
                self.circuit.failed(UpstreamDenied(f"{self.name} answered 401", 401))
            return response
        finally:
            self.circuit.release(probe)

    async def _exchange(
        self,
        method: str,
        target: _Target,
        headers: Mapping[bytes, list[bytes]],
        follow_redirects: bool,
    ) -> IResponse:
        credentials = await self.credentials.get()
        scoped = _ScopeRefusal(target.scope, credentials)
        basic = _LoginRefusal(self.config.url.to_text(), None, credentials)
        self._check_refusal(scoped)
        self._check_refusal(basic)
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
                if credentials is not None:
                    # Fresh credentials refused: asking again with them
                    # only adds failed logins.  Basic credentials are
                    # the same for every scope (RFC 7617), a token is not.
                    refusal = basic if retry.startswith(b"Basic ") else scoped
                    if response.code == 401:
                        self._refused(refusal, "the registry refused ocicache's credentials"
                                      + ("" if refusal is basic else " for " + target.scope))
                    else:
                        self._refusals.accept(refusal)
        if follow_redirects:
            # Docker Hub and GHCR send blob downloads to CDNs.
            response = await through_redirects(
                self.name, target.url, response, authorization,
                lambda to, authorization: self._request(method, to, headers, authorization, target.kind),
                self.discard)
        if response.code == 429:
            await self.discard(response)
            raise self._rate_limited(response)
        if target.kind == "manifest" and method == "GET":
            # Docker Hub counts a pull per manifest GET; HEADs are free.
            self._made += 1
            if self._metrics is not None:
                self._metrics.pull_equivalents.labels(self.name, "made").inc()
        return response

    async def _request(
        self,
        method: str,
        url: DecodedURL,
        headers: Mapping[bytes, list[bytes]],
        authorization: bytes | None,
        kind: RequestKind = "other",
    ) -> IResponse:
        now = self._reactor.seconds()
        self._obey_shared_pause(now)
        if self.quota.limited_for(now) > 0:
            # Not before the window allows: asking again only prolongs it.
            raise self._rate_limited()
        all_headers = Headers(dict(headers))
        all_headers.setRawHeaders(b"user-agent", [USER_AGENT])
        if authorization is not None:
            all_headers.setRawHeaders(b"authorization", [authorization])
        took = Stopwatch()
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
            self._observe(kind, "error", took)
            why = unavailability_of(e)
            # The message names the host but never the headers we sent.
            if why is Unavailability.TIMEOUT:
                message = f"{self.name}: no answer within {self._response_timeout:g}s (response_timeout)"
            else:
                message = f"{self.name}: {type(e).__name__}: {_describe(e)}"
            unavailable = UpstreamUnavailable(message, why)
            self.circuit.failed(unavailable)
            raise unavailable from None
        self._observe(kind, str(response.code), took)
        # A registry's 401 is a challenge until the exchange ends in it
        # (L{_send}); a token server's is a refusal.
        failure = status_error(response.code)
        if failure is None:
            self.circuit.succeeded()
        elif response.code != 401 or kind == "token":
            self.circuit.failed(failure)
        self.note_quota(response)
        if not self._chain_checked:
            self._check_chain(response)
        return response

    def _check_chain(self, response: IResponse) -> None:
        """
        Warn, once, when the upstream is another ocicache (its C{Server}
        header says so, RFC 9110 §10.2.4) but is not configured as a
        mirror tier: it then answers for its own default upstream only,
        whatever registry a client asked this one for.
        """
        self._chain_checked = True
        server = _first(response.headers, b"server") or b""
        if self.config.kind != "mirror" and server.startswith(b"ocicache/"):
            log.warn("{upstream}: {url} is an ocicache ({server}) configured as a registry, so every registry is"
                     " pulled through its default upstream: set kind = \"mirror\" in this [[upstream]]",
                     upstream=self.name, url=self.config.url.to_text(),
                     server=server.decode("ascii", "replace")[:64])

    def _observe(self, kind: RequestKind, code: str, took: Stopwatch) -> None:
        """
        Count one upstream request and the time until its headers came
        (C{code} is C{error} when there was no answer).
        """
        if self._metrics is not None:
            self._metrics.upstream_requests.labels(self.name, kind, code).inc()
            self._metrics.upstream_duration.labels(self.name).observe(took.elapsed())

    async def _authorization_for(self, scope: str) -> bytes | None:
        if self.config.token is not None:
            # RFC 6750 §2.1: a static token, sent with every request.
            return b"Bearer " + self.config.token.encode("ascii")
        if self._bearer is not None:
            key = self._token_key(self._bearer, scope, await self.credentials.get())
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
        credentials = await self.credentials.get()
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                self._bearer = challenge
                key = self._token_key(challenge, challenge.params.get("scope") or scope, credentials)
                token = await self._fetch_token(challenge, key)
                if token is not None:
                    return b"Bearer " + token.encode("ascii")
        if credentials is not None and any(c.scheme == "basic" for c in challenges):
            return _basic(credentials.username, credentials.password)
        return None

    def _token_key(self, challenge: Challenge, scope: str, credentials: Credentials | None) -> TokenKey:
        return TokenKey(
            realm=challenge.params["realm"],
            service=challenge.params.get("service"),
            scope=scope,
            username=credentials.username if credentials else None,
            credentials=credentials,
        )

    def _check_refusal(self, key: _LoginRefusal | _ScopeRefusal) -> None:
        """
        Raise L{UpstreamDenied} at once while the upstream's refusal of
        C{key}'s credentials is remembered.
        """
        seconds = self._refusals.refused_for(key)
        if seconds > 0:
            raise UpstreamDenied(
                f"{self.name} refused ocicache's credentials; not trying them again for"
                f" {math.ceil(seconds)}s", 401)

    def _refused(self, key: _LoginRefusal | _ScopeRefusal, what: str) -> float:
        """
        Remember a refusal of C{key}'s credentials and log it, once per
        backoff.
        """
        backoff = self._refusals.refuse(key)
        log.warn("{upstream}: {what}; not trying them again for {seconds:.0f}s",
                 upstream=self.name, what=what, seconds=backoff)
        return backoff

    async def _fetch_token(self, challenge: Challenge, key: TokenKey) -> str | None:
        """
        Get a token from the challenge's realm, once for every request
        that needs it meanwhile.
        """
        waiters = self._logins.get(key)
        if waiters is not None:
            mine: Deferred[str | None] = Deferred()
            waiters.append(mine)
            return await mine
        self._logins[key] = waiters = []
        try:
            token = await self._ask_token(challenge, key)
        except BaseException:
            failure = Failure()
            del self._logins[key]
            for waiter in waiters:
                # One that was cancelled (its client hung up) has fired.
                if not waiter.called:
                    waiter.errback(failure)
            raise
        del self._logins[key]
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(token)
        return token

    async def _ask_token(self, challenge: Challenge, key: TokenKey) -> str | None:
        """
        Get a token from the challenge's realm (distribution token spec,
        "Requesting a Token"), anonymously or with Basic credentials.
        Credentials it refused are not sent again for a growing backoff.
        """
        login = _LoginRefusal(key.realm, key.service, key.credentials)
        if key.credentials is not None:
            self._check_refusal(login)
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
        credentials = key.credentials
        authorization = _basic(credentials.username, credentials.password) if credentials else None
        response = await self._request("GET", realm, {}, authorization, "token")
        if response.code == 429:
            await self.discard(response)
            raise self._rate_limited(response)
        if response.code in (401, 403) and credentials is not None:
            # RFC 9110 §15.5.2, §15.5.4: the credentials were refused.
            await self.discard(response)
            backoff = self._refused(login, f"the token server refused ocicache's credentials ({response.code})")
            raise UpstreamDenied(
                f"{self.name} refused ocicache's credentials; not trying them again for {backoff:.0f}s", 401)
        body = await self.read_body(response, 1 << 20)
        if response.code != 200 or body is None:
            log.warn("{upstream}: token request answered {code}", upstream=self.name, code=response.code)
            return None
        try:
            token, expires_in = parse_token_response(body)
        except ValueError as e:
            log.warn("{upstream}: bad token response: {error}", upstream=self.name, error=str(e))
            return None
        self._refusals.accept(login)
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

    # -- the quota

    def note_quota(self, response: IResponse) -> None:
        """
        Take in what C{response} says of the upstream's quota: its
        rate-limit headers, and a 429's C{Retry-After}.  Each change of
        state is logged once: limited, recovered, below and above the
        C{quota_floor}.
        """
        headers = response.headers
        ratelimit = parse_ratelimit(
            _first(headers, b"ratelimit-limit"), _first(headers, b"ratelimit-remaining"),
            _first(headers, b"docker-ratelimit-source"),
        )
        # A mirror tier (another ocicache) answers 429 only for what it
        # lacks while its own upstream limits it, and serves the rest: its
        # 429s are passed on one by one, and it is never left alone.
        refused = response.code == 429 and self.config.mirror_ns is None
        if ratelimit is None and not refused and not self._limited:
            return
        now = self._reactor.seconds()
        self.quota = quota = self.quota.observed(ratelimit, now, refused, _first(headers, b"retry-after"))
        if refused:
            self._share_pause(quota)
        if self._metrics is not None and ratelimit is not None:
            if quota.limit is not None:
                self._metrics.ratelimit_limit.labels(self.name).set(quota.limit)
            if quota.remaining is not None:
                self._metrics.ratelimit_remaining.labels(self.name).set(quota.remaining)
            if quota.window is not None:
                self._metrics.ratelimit_window.labels(self.name).set(quota.window)
        limited = quota.limited_for(now) > 0
        if limited and not self._limited:
            log.warn("{upstream}: {kind}; not asking it again for {seconds:.0f}s",
                     upstream=self.name, seconds=quota.limited_for(now),
                     kind="pull rate limit reached" if quota.pull_limit
                     else "rate limited (429 without rate-limit headers)")
        elif not limited and self._limited:
            log.info("{upstream}: no longer rate limited", upstream=self.name)
        self._limited = limited
        below = quota.below(self.config.quota_floor, now)
        if below != self._below_floor:
            if below:
                log.warn("{upstream}: {remaining} of {limit} pulls left, below quota_floor: tags are"
                         " revalidated every {stretch:.0f}s", upstream=self.name, remaining=quota.remaining,
                         limit=quota.limit if quota.limit is not None else "?",
                         stretch=self.config.quota_stretch)
            else:
                log.info("{upstream}: {remaining} pulls left, above quota_floor again", upstream=self.name,
                         remaining=quota.remaining)
            self._below_floor = below

    def _obey_shared_pause(self, now: float) -> None:
        """Take up a longer pause another process on the host was told by a 429."""
        if self._pauses is None:
            return
        try:
            until = self._pauses.until(self.name)
        except OSError as e:
            log.warn("{upstream}: cannot read the pauses other processes share: {error}",
                     upstream=self.name, error=str(e))
            return
        if until is None or until <= now or until <= (self.quota.limited_until or 0.0):
            return
        self.quota = evolve(self.quota, limited_until=until)
        if not self._limited:
            log.warn("{upstream}: rate limited, as another process was told; not asking it for {seconds:.0f}s",
                     upstream=self.name, seconds=until - now)
        self._limited = True

    def _share_pause(self, quota: Quota) -> None:
        """Tell every process on the host how long this upstream asked to be left alone."""
        if self._pauses is None or quota.limited_until is None:
            return
        try:
            self._pauses.pause(self.name, quota.limited_until)
        except OSError as e:
            log.warn("{upstream}: cannot share its rate limit with other processes: {error}",
                     upstream=self.name, error=str(e))

    def restore(self, quota: Quota) -> None:
        """
        Take up the quota state of the last run (from the metadata
        database), unless this run has heard from the upstream already.
        """
        if self.quota != Quota():
            return
        now = self._reactor.seconds()
        self.quota = quota
        self._limited = quota.limited_for(now) > 0
        self._below_floor = quota.below(self.config.quota_floor, now)
        if self._limited:
            log.warn("{upstream}: still rate limited from the last run; not asking it again for {seconds:.0f}s",
                     upstream=self.name, seconds=quota.limited_for(now))

    def tag_ttl(self, normal: float) -> float:
        """
        How long this upstream's tags are trusted: C{normal}, stretched to
        C{quota_stretch} while its remaining pulls are below C{quota_floor},
        so that cached tags stop spending the quota.
        """
        if self.quota.below(self.config.quota_floor, self._reactor.seconds()):
            return max(normal, self.config.quota_stretch)
        return normal

    def _rate_limited(self, response: IResponse | None = None) -> UpstreamRateLimited:
        """
        The error for a request refused, or not sent, while the upstream
        is left alone: its C{Retry-After} is the seconds left (or, for a
        mirror's 429, the mirror's own).
        """
        now = self._reactor.seconds()
        seconds = self.quota.limited_for(now)
        retry_after = _first(response.headers, b"retry-after") if response is not None else None
        if not seconds and retry_after is not None:
            seconds = parse_retry_after(retry_after, now) or 0.0
        return UpstreamRateLimited(f"{self.name} is rate limiting ocicache", b"%d" % max(1, math.ceil(seconds)))

    def saved_pull(self) -> None:
        """A client's manifest GET was answered without one upstream."""
        self._saved += 1
        if self._metrics is not None:
            self._metrics.pull_equivalents.labels(self.name, "saved").inc()

    def pulls(self) -> tuple[int, int]:
        """Pull-equivalents made and saved since the last L{flushed}."""
        return self._made, self._saved

    def flushed(self, made: int, saved: int) -> None:
        """C{made} and C{saved} of L{pulls} are in the metadata database."""
        self._made -= made
        self._saved -= saved


@frozen
class _LoginRefusal:
    """
    A refusal of credentials for every scope: by a token server (its realm
    and service), or by a registry that asks for Basic (its URL, no service).
    """

    realm: str
    service: str | None
    credentials: Credentials | None = field(repr=False)


@frozen
class _ScopeRefusal:
    """A registry's 401 to fresh credentials: for one scope."""

    scope: str
    credentials: Credentials | None = field(repr=False)


def _first(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[0] if values else None


def _basic(username: str, password: str) -> bytes:
    # RFC 7617 §2: base64 of user-id ":" password.
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def _describe(error: Exception) -> str:
    return describe(error)
