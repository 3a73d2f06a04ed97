"""
The JWT plumbing every verifier shares (RFC 7519): a look at a token's
claims before its signature is checked (only to pick the key), the
signature check itself (joserfc), the time claims, and the string claims
an identity keeps.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import Key

from ._errors import Unauthenticated

__all__ = ["ALGORITHMS", "LEEWAY", "Unverified", "audiences", "check_times", "decode", "peek", "string_claims"]

LEEWAY = 60
"""Seconds of clock skew allowed on C{exp}, C{nbf} and C{iat} (RFC 7519 §4.1.4)."""

# A JWT travels in a header, and the header is bounded (16 KiB by
# default); this is a further bound on what is parsed before it is trusted.
_MAX_TOKEN = 8192
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"]
"""Asymmetric algorithms only: C{none} and the HMACs are never accepted."""


class Unverified:
    """A compact JWS's header and claims, before anything about them is trusted."""

    def __init__(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
        self.header = header
        self.claims = claims

    @property
    def issuer(self) -> str | None:
        issuer = self.claims.get("iss")
        return issuer if isinstance(issuer, str) else None

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def _segment(text: str) -> Mapping[str, Any] | None:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(data)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def peek(token: str) -> Unverified | None:
    """
    C{token}'s header and claims if it has a JWT's shape (three base64url
    parts, JSON objects in the first two), else C{None}.
    """
    if len(token) > _MAX_TOKEN or token.count(".") != 2:
        return None
    head, body, _ = token.split(".")
    header, claims = _segment(head), _segment(body)
    if header is None or claims is None:
        return None
    return Unverified(header, claims)


def decode(token: str, key: Key) -> Mapping[str, Any]:
    """The claims of C{token} once its signature verifies with C{key}."""
    try:
        decoded = jwt.decode(token, key, algorithms=ALGORITHMS)
    except (JoseError, ValueError, TypeError):
        raise Unauthenticated("the token's signature does not verify") from None
    return decoded.claims


def check_times(claims: Mapping[str, Any], now: float) -> None:
    """
    RFC 7519 §4.1.4-6: C{exp} is required and must be in the future;
    C{nbf} and C{iat}, when given, must not be; all with L{LEEWAY}.
    """
    if not isinstance(claims.get("exp"), (int, float)) or isinstance(claims.get("exp"), bool):
        raise Unauthenticated("the token has no expiry")
    registry = jwt.JWTClaimsRegistry(now=int(now), leeway=LEEWAY)
    try:
        registry.validate(dict(claims))
    except ExpiredTokenError:
        raise Unauthenticated("the token has expired") from None
    except JoseError:
        raise Unauthenticated("the token is not valid yet, or its times are malformed") from None


def audiences(claims: Mapping[str, Any]) -> list[str]:
    """RFC 7519 §4.1.3: C{aud} is one string or a list of them."""
    audience = claims.get("aud")
    if isinstance(audience, str):
        return [audience]
    if isinstance(audience, list):
        return [entry for entry in audience if isinstance(entry, str)]
    return []


_MAX_CLAIMS = 64
_MAX_CLAIM = 1024


def string_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """
    The claims the policy may match on: string values only (GitHub's
    C{repository}, C{ref}, GitLab's C{project_path}, ...), bounded in
    number and length.
    """
    kept: dict[str, str] = {}
    for name, value in claims.items():
        if isinstance(name, str) and isinstance(value, str) and len(value) <= _MAX_CLAIM:
            kept[name] = value
            if len(kept) >= _MAX_CLAIMS:
                break
    return kept
