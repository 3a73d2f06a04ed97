"""
OIDC workload identity: JWTs that CI providers (GitHub Actions, GitLab,
Buildkite) give their jobs, verified against one C{[[auth.oidc]]} issuer:
the signature by the issuer's JWKS, C{iss}, C{aud} and expiry.  The
identity is the token's C{sub}; its string claims (C{repository},
C{ref}, C{pipeline_slug}, ...) go to the policy.

The JWKS comes from C{jwks_file} (read at load, for air-gapped sites) or
from C{jwks_url}, fetched on first use and cached.  It is fetched again
when older than L{MAX_AGE}, or when a token names a key it does not hold
(the issuer rotated its keys), but for that at most once per
L{MIN_REFRESH}, so tokens with made-up key ids cannot make ocicache hammer
the issuer; a failed fetch is retried at most every L{RETRY}, and keeps
the keys it had; concurrent refreshes share one fetch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import treq
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from .._ops._config import OIDCIssuerConfig
from ._auth_files import parse_jwks
from ._errors import Unauthenticated
from ._identity import Identity, IdentityKind
from ._jwt import Unverified, audiences, check_times, decode, string_claims

__all__ = ["MAX_AGE", "MAX_JWKS_BYTES", "MIN_REFRESH", "RETRY", "Fetch", "OIDCIssuer", "fetch_with"]

log = Logger()

MAX_AGE = 3600.0
MIN_REFRESH = 60.0
RETRY = 10.0
MAX_JWKS_BYTES = 1 << 20
_TIMEOUT = 10.0

Fetch = Callable[[str], "Deferred[bytes]"]
"""C{fetch(url)}: the body of a C{GET url} that answered 200, bounded."""


class _TooLarge(Exception):
    pass


def fetch_with(client: Any) -> Fetch:
    """
    A L{Fetch} through a treq C{HTTPClient}: a 200 within L{_TIMEOUT}
    seconds, at most L{MAX_JWKS_BYTES} of body.
    """

    async def fetch(url: str) -> bytes:
        response: IResponse = await client.get(url, timeout=_TIMEOUT, headers={"Accept": ["application/json"]})
        if response.code != 200:
            await treq.collect(response, lambda data: None)
            raise ValueError(f"HTTP {response.code}")
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_JWKS_BYTES:
                raise _TooLarge()
            chunks.append(data)

        await treq.collect(response, collect)
        return b"".join(chunks)

    return lambda url: Deferred.fromCoroutine(fetch(url))


class OIDCIssuer:
    """One configured issuer: its audience and its keys."""

    def __init__(self, config: OIDCIssuerConfig, clock: IReactorTime, fetch: Fetch | None) -> None:
        self.issuer = config.issuer
        self._audience = config.audience
        self._url = config.jwks_url
        self._clock = clock
        self._fetch = fetch
        self._keys: KeySet | None = KeySet.import_key_set(config.jwks) if config.jwks is not None else None  # type: ignore[arg-type]
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._unknown_kid_at: float | None = None
        self._refreshing: list[Deferred[None]] | None = None

    def __repr__(self) -> str:
        return f"<OIDCIssuer {self.issuer!r}>"

    async def verify(self, token: str, unverified: Unverified) -> tuple[Identity, float]:
        """
        The workload identity in C{token}, which claims to be this
        issuer's, and when the token expires.

        @raise Unauthenticated: If it does not verify, is for another
            audience, or has expired.
        """
        key = await self._key(unverified.kid)
        claims = decode(token, key)
        if claims.get("iss") != self.issuer:
            raise Unauthenticated("the token is not from a configured issuer")
        if self._audience not in audiences(claims):
            raise Unauthenticated("the token is for another audience")
        check_times(claims, self._clock.seconds())
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("the token has no subject")
        return Identity(IdentityKind.OIDC, subject, string_claims(claims)), float(claims["exp"])

    async def _key(self, kid: str | None) -> Key:
        if self._url is not None and self._should_refresh(kid):
            await self._refresh()
        if self._keys is None:
            raise Unauthenticated("the issuer's keys are not available")
        found = _find(self._keys, kid)
        if found is None:
            raise Unauthenticated("the token is not signed with a key of the issuer's")
        return found

    def _should_refresh(self, kid: str | None) -> bool:
        """
        Whether to fetch the JWKS now (and, for an unknown key id, note
        that one was spent): when there are no keys, or they are older
        than L{MAX_AGE}, retried at most every L{RETRY}; for a key id the
        keys lack, at most once per L{MIN_REFRESH}; and always to join a
        fetch in flight.
        """
        if self._refreshing is not None:
            return True
        now = self._clock.seconds()
        if self._keys is None or self._fetched_at is None or now - self._fetched_at >= MAX_AGE:
            return self._attempted_at is None or now - self._attempted_at >= RETRY
        if _find(self._keys, kid) is not None:
            return False
        if self._unknown_kid_at is not None and now - self._unknown_kid_at < MIN_REFRESH:
            return False
        self._unknown_kid_at = now
        return True

    async def _refresh(self) -> None:
        waiting: Deferred[None] = Deferred()
        if self._refreshing is not None:
            self._refreshing.append(waiting)
        else:
            self._refreshing = [waiting]
            self._attempted_at = self._clock.seconds()
            Deferred.fromCoroutine(self._download()).addBoth(self._refreshed)
        await waiting

    async def _download(self) -> None:
        if self._fetch is None or self._url is None:
            return
        try:
            body = await self._fetch(self._url)
            keys = KeySet.import_key_set(parse_jwks(json.loads(body)))  # type: ignore[arg-type]
        except (_TooLarge, ValueError, TypeError, KeyError, JoseError, UnicodeDecodeError) as e:
            reason = f"more than {MAX_JWKS_BYTES} bytes" if isinstance(e, _TooLarge) else str(e)
            log.warn("OIDC issuer {issuer}: cannot use the JWKS at {url}: {reason}; keeping the keys it had",
                     issuer=self.issuer, url=self._url, reason=reason)
            return
        except Exception as e:
            log.warn("OIDC issuer {issuer}: cannot fetch the JWKS at {url}: {reason}; keeping the keys it had",
                     issuer=self.issuer, url=self._url, reason=type(e).__name__)
            return
        self._keys = keys
        self._fetched_at = self._clock.seconds()

    def _refreshed(self, result: None | Failure) -> None:
        waiters, self._refreshing = self._refreshing or [], None
        for waiting in waiters:
            waiting.callback(None)
        if isinstance(result, Failure):
            log.failure("OIDC issuer {issuer}: refreshing the JWKS failed", result, issuer=self.issuer)


def _find(keys: KeySet, kid: str | None) -> Key | None:
    try:
        return keys.get_by_kid(kid)
    except (JoseError, ValueError):
        return None
