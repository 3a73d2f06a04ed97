"""
ocicache's own tokens, for the registry token flow (distribution's
"Token Authentication Specification"): a client that was challenged with
C{Bearer realm=…/token,service=…} swaps its Basic credentials there for
one of these, then sends it as C{Authorization: Bearer}.

A token is a JWT signed with ES256 (a P-256 key made at start) or with
the operator's C{token_key_file} (RS256 or ES256).  It names who the
client proved to be: C{sub}, and in C{ocicache} the identity's kind and,
for an OIDC workload, its claims, so that the policy sees the same
identity whichever way it came.  C{access} lists the pull scopes asked
for, as clients expect; what may be pulled is the policy's to decide.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from attrs import field, frozen
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt
from joserfc.jwk import ECKey, Key, RSAKey
from twisted.internet.interfaces import IReactorTime

from ._errors import Unauthenticated
from ._identity import Identity, IdentityKind
from ._jwt import audiences, check_times, decode

__all__ = ["IssuedToken", "TokenIssuer"]


@frozen
class IssuedToken:
    """A token response's fields (token spec, "Token Response Fields")."""

    token: str = field(repr=False)
    expires_in: int
    issued_at: str


class TokenIssuer:
    """Signs and verifies ocicache's tokens for one C{service}."""

    def __init__(self, service: str, ttl: float, key_pem: bytes | None, clock: IReactorTime) -> None:
        self.service = service
        self._ttl = ttl
        self._clock = clock
        key: Key
        if key_pem is None:
            key = ECKey.generate_key("P-256", auto_kid=True)
        else:
            # Checked at load (RSA or EC P-256): say which, as joserfc asks.
            if isinstance(load_pem_private_key(key_pem, password=None), rsa.RSAPrivateKey):
                key = RSAKey.import_key(key_pem)
            else:
                key = ECKey.import_key(key_pem)
            key.ensure_kid()
        self._key = key
        self._algorithm = "RS256" if isinstance(key, RSAKey) else "ES256"

    def __repr__(self) -> str:
        return f"<TokenIssuer for {self.service!r}>"

    def issue(self, identity: Identity, access: Sequence[Mapping[str, Any]],
              not_after: float | None = None) -> IssuedToken:
        """
        A token for C{identity}, valid for C{token_ttl}, or only until
        C{not_after} (an OIDC token's own expiry: a swap never extends it).
        """
        now = int(self._clock.seconds())
        expires = now + int(self._ttl)
        if not_after is not None:
            expires = min(expires, int(not_after))
        claims: dict[str, Any] = {
            "iss": self.service, "aud": self.service, "sub": identity.name,
            "iat": now, "nbf": now, "exp": expires, "jti": uuid.uuid4().hex,
            "access": list(access),
            "ocicache": {"kind": str(identity.kind), "claims": dict(identity.claims)},
        }
        header = {"alg": self._algorithm, "kid": self._key.kid}
        token = jwt.encode(header, claims, self._key, algorithms=[self._algorithm])
        issued_at = datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z")
        return IssuedToken(token, max(0, expires - now), issued_at)

    def verify(self, token: str) -> tuple[Identity, float]:
        """
        The identity a token of ours names, and when the token expires.

        @raise Unauthenticated: If it is not ours, is for another service,
            or has expired.
        """
        claims = decode(token, self._key)
        if claims.get("iss") != self.service or self.service not in audiences(claims):
            raise Unauthenticated("the token is not for this service")
        check_times(claims, self._clock.seconds())
        subject = claims.get("sub")
        ours = claims.get("ocicache")
        if not isinstance(subject, str) or not isinstance(ours, dict):
            raise Unauthenticated("the token names no identity")
        try:
            kind = IdentityKind(str(ours.get("kind")))
        except ValueError:
            raise Unauthenticated("the token names no identity") from None
        if kind is IdentityKind.ANONYMOUS:
            raise Unauthenticated("the token names no identity")
        named = ours.get("claims")
        kept = {k: v for k, v in named.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(named, dict) else {}
        return Identity(kind, subject, kept), float(claims["exp"])
