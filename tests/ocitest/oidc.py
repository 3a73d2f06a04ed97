"""
A test OIDC issuer: signing keys the test makes (joserfc), its JWKS served
on loopback, and workload tokens (JWTs) minted as a CI provider would.

    issuer = OIDCIssuer().start()
    issuer.jwks_url                       # http://127.0.0.1:PORT/jwks
    issuer.mint(sub="repo:org/app:ref:refs/heads/main", aud="ocicache-ci")
    issuer.rotate()                       # a new key (and kid) in the JWKS
    issuer.fetches                        # how many times the JWKS was fetched
    issuer.stop()
"""

from __future__ import annotations

import http.server
import json
import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from .serving import LoopbackServer, send

__all__ = ["OIDCIssuer"]


class OIDCIssuer:
    """Mints RS256 JWTs; serves the public keys at C{/jwks}."""

    def __init__(self, issuer: str | None = None) -> None:
        self._server = LoopbackServer(self._answer, name="oidc-issuer")
        self.port = self._server.port
        self.issuer = issuer or self._server.url
        self.key = RSAKey.generate_key(2048, auto_kid=True)
        self.fetches = 0

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False, use="sig", alg="RS256")]}

    def rotate(self) -> None:
        """A new signing key, the only one in the JWKS from now on."""
        self.key = RSAKey.generate_key(2048, auto_kid=True)

    def mint(self, sub: str = "repo:org/app:ref:refs/heads/main", aud: str | list[str] = "ocicache-ci",
             expires_in: int = 300, key: RSAKey | None = None, issuer: str | None = None,
             kid: str | None = None, **claims: Any) -> str:
        """A workload token, signed with C{key} (default: the issuer's current key)."""
        signer = key or self.key
        now = int(time.time())
        body = {"iss": issuer or self.issuer, "sub": sub, "aud": aud, "iat": now - 5, "nbf": now - 5,
                "exp": now + expires_in, "jti": uuid.uuid4().hex, **claims}
        header = {"alg": "RS256", "kid": kid or signer.kid}
        return jwt.encode(header, body, signer, algorithms=["RS256"])

    def start(self) -> OIDCIssuer:
        self._server.start()
        return self

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path != "/jwks":
            send(handler, 404, content_type=None)
            return
        self.fetches += 1
        send(handler, 200, json.dumps(self.jwks()).encode())

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> OIDCIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
