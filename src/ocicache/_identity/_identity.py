"""
The one value every verifier produces and the policy consumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from attrs import field, frozen

__all__ = ["ANONYMOUS", "Identity", "IdentityKind"]


class IdentityKind(StrEnum):
    """How a client proved who it is."""

    ANONYMOUS = "anonymous"
    TOKEN = "token"
    """A static bearer token from a token file: C{name} is the token's name."""
    USER = "user"
    """Basic credentials checked against htpasswd, or ocicache's own token for them."""
    OIDC = "oidc"
    """A verified workload JWT: C{name} is its C{sub}, C{claims} its string claims."""


@frozen
class Identity:
    """
    A proven client identity.  It never holds a secret: only names and
    the claims the policy matches on, so it is safe to log.
    """

    kind: IdentityKind
    name: str
    claims: Mapping[str, str] = field(factory=dict)

    def __str__(self) -> str:
        if self.kind is IdentityKind.ANONYMOUS:
            return "-"
        return f"{self.kind}:{self.name}"


ANONYMOUS = Identity(IdentityKind.ANONYMOUS, "")
