"""
The one object the web layer asks who a request is: built from C{[auth]}
alone (L{build_authenticator}), so that a reload replaces it whole with
one built from the new configuration.

What a request may present (any combination the configuration allows):

  - nothing: anonymous, when C{anonymous = true} or there is no C{[auth]};
  - C{Authorization: Bearer <token>}: a static token, ocicache's own
    token (the token flow), or an OIDC workload JWT;
  - C{Authorization: Basic <user:password>}: an htpasswd user; or a
    static token as the password of the user named like it; or an OIDC
    JWT as the password (so C{docker login} works in CI), any user.

Credentials that are presented and wrong are refused even when anonymous
requests are allowed: a typo must not quietly turn into anonymous.

A JWT that verified (ocicache's own, or an OIDC one) is remembered by the
SHA-256 of its header for up to L{PROOF_SECONDS}, never past its expiry,
so the requests of one pull check its signature once; htpasswd has its
own memo (L{ocicache._identity._htpasswd}), and static tokens cost a hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from .._ops._config import AuthConfig
from .._ops._metrics import Metrics
from .._spec._auth import (
    BasicCredentials,
    BearerCredentials,
    Challenge,
    InvalidAuthorization,
    parse_authorization,
)
from .._spec._reference import InvalidReference, is_registry_host, validate_name
from ._errors import Denied, Unauthenticated
from ._htpasswd import Htpasswd, RunInThread
from ._identity import ANONYMOUS, Identity
from ._issuer import IssuedToken, TokenIssuer
from ._jwt import peek
from ._memo import Memo
from ._oidc import Fetch, OIDCIssuer
from ._static import StaticTokens

__all__ = ["PROOF_MEMO_SIZE", "PROOF_SECONDS", "Authenticator", "build_authenticator"]

PROOF_SECONDS = 60.0
PROOF_MEMO_SIZE = 4096


class Authenticator:
    """
    Verifies a request's credentials into an L{Identity}, says how to
    challenge a client that has none, and issues ocicache's tokens.
    """

    def __init__(
        self,
        config: AuthConfig | None,
        clock: IReactorTime,
        run_in_thread: RunInThread,
        fetch: Fetch | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._metrics = metrics
        self._proven: Memo[tuple[Identity, float | None]] = Memo(clock, PROOF_MEMO_SIZE)
        on_check = metrics.password_checks.inc if metrics is not None else (lambda: None)
        self._tokens = StaticTokens(config.tokens if config is not None else ())
        self._users = Htpasswd(config.users if config is not None else {}, clock, run_in_thread, on_check)
        self.issuer = (TokenIssuer(config.token_service, config.token_ttl, config.token_key, clock)
                       if config is not None and config.issue_tokens else None)
        self._oidc = {entry.issuer: OIDCIssuer(entry, clock, fetch)
                      for entry in (config.oidc if config is not None else ())}

    def __repr__(self) -> str:
        return f"<Authenticator {'on' if self.enabled else 'off'}>"

    def describe(self) -> str:
        """What it accepts, for the start-up log line: names and counts, no secret."""
        config = self.config
        if config is None:
            return "off (no [auth]: every request is anonymous)"
        parts = []
        if config.tokens:
            parts.append(f"{len(config.tokens)} static token(s)")
        if config.users:
            parts.append(f"{len(config.users)} htpasswd user(s)")
        parts += [f"OIDC from {entry.issuer}" for entry in config.oidc]
        if self.issuer is not None:
            parts.append(f"the token flow (service {config.token_service!r})")
        parts.append("anonymous allowed" if config.anonymous else "anonymous refused")
        return ", ".join(parts)

    @property
    def enabled(self) -> bool:
        """Whether there is an C{[auth]} section at all."""
        return self.config is not None

    async def authenticate(self, authorization: bytes | None) -> Identity:
        """
        Who a request with this C{Authorization} header is.

        @raise Unauthenticated: If it has no credentials and must, or
            has wrong ones.
        """
        if self.config is None:
            return ANONYMOUS
        if authorization is None:
            if self.config.anonymous:
                return ANONYMOUS
            self._count("none", False)
            raise Unauthenticated("authentication required")
        identity, _ = await self._verify(authorization, allow_ours=True)
        return identity

    async def authenticate_for_token(self, authorization: bytes | None) -> tuple[Identity, float | None]:
        """
        Who asks the token endpoint for a token, and until when their
        credentials hold (an OIDC token's expiry): primary credentials
        only, never one of ocicache's own tokens (or a token could be
        renewed forever).

        @raise Unauthenticated: Without credentials, or with wrong ones.
        @raise Denied: For one of ocicache's own tokens.
        """
        if self.config is None or self.issuer is None:
            raise Denied("this mirror issues no tokens")
        if authorization is None:
            self._count("none", False)
            raise Unauthenticated("authentication required")
        return await self._verify(authorization, allow_ours=False)

    async def _verify(self, authorization: bytes, allow_ours: bool) -> tuple[Identity, float | None]:
        try:
            credentials = parse_authorization(authorization)
        except InvalidAuthorization as e:
            self._count("other", False)
            raise Unauthenticated(str(e)) from None
        method = "basic" if isinstance(credentials, BasicCredentials) else "bearer"
        # Only where ocicache's own tokens are welcome: the token endpoint
        # must see each one to refuse it.
        key = hashlib.sha256(authorization).digest() if allow_ours else None
        proven = self._proven.get(key) if key is not None else None
        if proven is not None:
            self._count(method, True)
            return proven
        try:
            if isinstance(credentials, BasicCredentials):
                identity, expires = await self._basic(credentials)
            else:
                identity, expires = await self._bearer(credentials, allow_ours)
        except (Unauthenticated, Denied):
            self._count(method, False)
            raise
        self._count(method, True)
        if key is not None and expires is not None:
            # A JWT's signature check costs about 0.2 ms: once per token
            # and minute, not once per request.
            self._proven.put(key, (identity, expires), min(expires, self._clock.seconds() + PROOF_SECONDS))
        return identity, expires

    async def _basic(self, credentials: BasicCredentials) -> tuple[Identity, float | None]:
        password = credentials.password
        unverified = peek(password)
        if unverified is not None and unverified.issuer in self._oidc:
            return await self._oidc[unverified.issuer].verify(password, unverified)
        token = self._tokens.identify(password)
        if token is not None and token.name == credentials.username:
            return token, None
        if self._users:
            return await self._users.check(credentials.username, password), None
        raise Unauthenticated("invalid username or password")

    async def _bearer(self, credentials: BearerCredentials, allow_ours: bool) -> tuple[Identity, float | None]:
        token = credentials.token
        static = self._tokens.identify(token)
        if static is not None:
            return static, None
        unverified = peek(token)
        if unverified is None:
            raise Unauthenticated("invalid token")
        if self.issuer is not None and unverified.issuer == self.issuer.service:
            if not allow_ours:
                raise Denied("a token of this mirror's cannot be swapped for another; send your credentials")
            return self.issuer.verify(token)
        issuer = self._oidc.get(unverified.issuer or "")
        if issuer is None:
            raise Unauthenticated("the token is not from a configured issuer")
        return await issuer.verify(token, unverified)

    def _count(self, method: str, ok: bool) -> None:
        if self._metrics is not None:
            self._metrics.client_auth.labels(method, "ok" if ok else "refused").inc()

    def challenge(self, origin: str, scope: str | None = None) -> Challenge:
        """
        The C{WWW-Authenticate} challenge for a 401 (RFC 9110 §11.6.1):
        with the token flow, distribution's C{Bearer realm,service,scope}
        (token spec, "How to authenticate"), the realm C{token_realm} or
        C{/token} under C{origin} (C{http://host:port}, where the client
        reached ocicache); else C{Basic} (RFC 7617).
        """
        config = self.config
        service = config.token_service if config is not None else "ocicache"
        if self.issuer is None:
            return Challenge("Basic", {"realm": service})
        realm = config.token_realm if config is not None and config.token_realm else f"{origin}/token"
        params = {"realm": realm, "service": service}
        if scope is not None:
            params["scope"] = scope
        return Challenge("Bearer", params)

    def challenge_for_token(self) -> Challenge:
        """The token endpoint's own challenge: Basic credentials (RFC 7617)."""
        service = self.config.token_service if self.config is not None else "ocicache"
        return Challenge("Basic", {"realm": service})

    def issue(self, identity: Identity, scopes: Sequence[str], not_after: float | None = None) -> IssuedToken:
        """
        A token for C{identity} granting pull on the repositories in
        C{scopes}, expiring by C{not_after} if given.
        """
        if self.issuer is None:
            raise Denied("this mirror issues no tokens")
        return self.issuer.issue(identity, _pull_access(scopes), not_after)


def _pull_access(scopes: Sequence[str]) -> list[Mapping[str, Any]]:
    """
    Token spec, "Requesting a Token": C{repository:<name>:<actions>}
    scopes, each granted C{pull} only, since ocicache is read-only.
    """
    access: list[Mapping[str, Any]] = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and _is_repository(name) and "pull" in actions.split(","):
            access.append({"type": "repository", "name": name, "actions": ["pull"]})
    return access


def _is_repository(name: str) -> bool:
    """A repository name (spec grammar), maybe behind a registry host (podman's mirror paths)."""
    host, slash, rest = name.partition("/")
    if slash and is_registry_host(host) and ("." in host or ":" in host):
        name = rest
    try:
        validate_name(name)
    except InvalidReference:
        return False
    return True


def build_authenticator(
    config: AuthConfig | None, clock: IReactorTime, run_in_thread: RunInThread,
    fetch: Fetch | None = None, metrics: Metrics | None = None,
) -> Authenticator:
    """The authenticator for C{[auth]} (C{None}: none, everyone anonymous)."""
    return Authenticator(config, clock, run_in_thread, fetch, metrics)
