"""
The files C{[auth]} names, read and checked when the configuration loads:
static bearer tokens, htpasswd (bcrypt only), a JWKS for an air-gapped
OIDC issuer, and the key ocicache signs its own tokens with.

Each reader raises C{ValueError} with a message that names the line or
the problem and never the secret itself; L{ocicache._ops._config} adds the
key.  This module imports nothing of ours, so the config (below this
package) may read these files with it.  What they return keeps its secrets out of C{repr()}.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

__all__ = [
    "StaticToken",
    "read_htpasswd",
    "read_jwks",
    "read_signing_key",
    "read_tokens_file",
    "token_digest",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
"""A token or user name: safe to write in a log line or a metric."""
# A token is sent as "Authorization: Bearer <token>" (RFC 6750 §2.1,
# b64token) or as a Basic password: visible ASCII, no colon for Basic's sake.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/=]+")
_MIN_TOKEN = 16
_HASHED = re.compile(r"sha256:([0-9a-f]{64})")
# bcrypt's modular crypt format, as htpasswd -B and distribution write it.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def token_digest(token: str) -> bytes:
    """The SHA-256 of a token, the form a tokens file may store it in."""
    return hashlib.sha256(token.encode("ascii")).digest()


@frozen
class StaticToken:
    """One line of a tokens file: a name to log, and the token's SHA-256."""

    name: str
    digest: bytes = field(repr=False)


def _lines(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path!r} is not UTF-8") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_tokens_file(path: str) -> tuple[StaticToken, ...]:
    """
    C{name:token} or C{name:sha256:<hex>} per line (the hex is the SHA-256
    of the token); blank lines and C{#} comments are skipped.
    """
    tokens: list[StaticToken] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, line in _lines(path):
        name, colon, secret = line.partition(":")
        if not colon or _NAME.fullmatch(name) is None:
            raise ValueError(f"{path!r} line {number}: expected name:token or name:sha256:<hex>,"
                             " the name of letters, digits and ._@+-")
        hashed = _HASHED.fullmatch(secret)
        if hashed is not None:
            digest = bytes.fromhex(hashed.group(1))
        elif _TOKEN.fullmatch(secret) is None or len(secret) < _MIN_TOKEN:
            raise ValueError(f"{path!r} line {number}: token {name!r} must be at least {_MIN_TOKEN}"
                             " characters of A-Z a-z 0-9 -._~+/= (or sha256:<64 hex digits>)")
        else:
            digest = token_digest(secret)
        if name in names:
            raise ValueError(f"{path!r} line {number}: token name {name!r} appears twice")
        if digest in digests:
            raise ValueError(f"{path!r} line {number}: token {name!r} is the same as an earlier one")
        names.add(name)
        digests.add(digest)
        tokens.append(StaticToken(name, digest))
    if not tokens:
        raise ValueError(f"{path!r} has no tokens")
    return tuple(tokens)


def read_htpasswd(path: str) -> dict[str, bytes]:
    """
    C{user:hash} per line, the hash bcrypt's (C{htpasswd -B}; the format
    distribution and nginx read).  MD5, SHA-1, crypt and plain entries are
    refused: they are too cheap to brute-force.
    """
    users: dict[str, bytes] = {}
    for number, line in _lines(path):
        user, colon, hashed = line.partition(":")
        if not colon or _NAME.fullmatch(user) is None:
            raise ValueError(f"{path!r} line {number}: expected user:hash, the user of letters, digits and ._@+-")
        if _BCRYPT.fullmatch(hashed) is None:
            raise ValueError(f"{path!r} line {number}: user {user!r}: only bcrypt entries ($2y$, $2b$, $2a$)"
                             " are accepted; make them with htpasswd -B")
        if user in users:
            raise ValueError(f"{path!r} line {number}: user {user!r} appears twice")
        users[user] = hashed.encode("ascii")
    if not users:
        raise ValueError(f"{path!r} has no users")
    return users


_MAX_KEYS = 100


def parse_jwks(document: object) -> Mapping[str, Any]:
    """
    A JWKS (RFC 7517 §5) checked to hold 1 to 100 public signature keys
    (RSA, EC or OKP), returned as parsed JSON.  Symmetric (C{oct}) keys
    are refused: anyone who can verify with one could sign.
    """
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS: expected a JSON object with a \"keys\" list")
    keys = document["keys"]
    if not 1 <= len(keys) <= _MAX_KEYS:
        raise ValueError(f"a JWKS must hold 1 to {_MAX_KEYS} keys")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC", "OKP"):
            raise ValueError("a JWKS key must be an RSA, EC or OKP key")
        if key.get("use", "sig") != "sig":
            raise ValueError("a JWKS key must be for signatures (use \"sig\")")
    try:
        KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"a JWKS key cannot be read: {type(e).__name__}") from None
    return document


def read_jwks(path: str) -> Mapping[str, Any]:
    """A JWKS file (L{parse_jwks}), for an issuer ocicache cannot reach."""
    try:
        with open(path, "rb") as f:
            document = json.loads(f.read())
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path!r} is not JSON") from None
    try:
        return parse_jwks(document)
    except ValueError as e:
        raise ValueError(f"{path!r}: {e}") from None


def read_signing_key(path: str) -> bytes:
    """
    A PEM private key, RSA (signs RS256) or EC P-256 (ES256), for the
    tokens ocicache issues.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}") from None
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path!r} is not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"{path!r}: an RSA key must have at least 2048 bits")
    elif not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        raise ValueError(f"{path!r}: the key must be RSA or EC P-256")
    return pem
