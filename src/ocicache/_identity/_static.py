"""
Static bearer tokens from a tokens file: what containerd's C{hosts.toml}
sends with C{[host."…".header] Authorization = "Bearer …"}.

Only each token's SHA-256 is kept.  A presented token is hashed and
looked up by its hash, so no comparison runs over the secret itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._auth_files import StaticToken, token_digest
from ._identity import Identity, IdentityKind

__all__ = ["StaticTokens"]


class StaticTokens:
    """The tokens of one tokens file, by the SHA-256 of each."""

    def __init__(self, tokens: Iterable[StaticToken]) -> None:
        self._names = {token.digest: token.name for token in tokens}

    def __repr__(self) -> str:
        return f"<StaticTokens: {len(self._names)}>"

    def __bool__(self) -> bool:
        return bool(self._names)

    def identify(self, token: str) -> Identity | None:
        """The identity C{token} is the token of, or C{None}."""
        try:
            digest = token_digest(token)
        except UnicodeEncodeError:
            return None
        name = self._names.get(digest)
        return Identity(IdentityKind.TOKEN, name) if name is not None else None
