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
import threading
import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from . import free_port

__all__ = ["OIDCIssuer"]


class OIDCIssuer:
    """Mints RS256 JWTs; serves the public keys at C{/jwks}."""

    def __init__(self, issuer: str | None = None) -> None:
        self.port = free_port()
        self.issuer = issuer or f"http://127.0.0.1:{self.port}"
        self.key = RSAKey.generate_key(2048, auto_kid=True)
        self.fetches = 0
        self._server: http.server.ThreadingHTTPServer | None = None

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
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                if self.path != "/jwks":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.fetches += 1
                body = json.dumps(outer.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True, name="oidc-issuer").start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> OIDCIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
