"""
What can go wrong when a client proves who it is.  The web layer maps
these (L{ocicache._web._errors}): L{Unauthenticated} to C{401
UNAUTHORIZED} with a challenge, L{Denied} to C{403 DENIED}.

Messages go into error bodies: they say what was wrong, never the
credentials, a token or a claim's value.
"""

from __future__ import annotations

__all__ = ["AuthenticationError", "Denied", "Unauthenticated"]


class AuthenticationError(Exception):
    """A request's credentials were missing, wrong, or not good for what it asked."""


class Unauthenticated(AuthenticationError):
    """No credentials, or ones that prove nothing: the client should (re)authenticate."""


class Denied(AuthenticationError):
    """Proven credentials that may not do what was asked."""
