"""
Who a client is: the identity a request proves (static bearer token,
htpasswd Basic, ocicache's own signed token, or an OIDC workload token),
checked before any routing, cache lookup or upstream request.

Its verifiers raise domain errors (L{ocicache._identity._errors}); the web
layer maps them to C{401 UNAUTHORIZED} or C{403 DENIED}.

May import: L{ocicache._spec}, L{ocicache._ops}.
"""

from ._identity import ANONYMOUS, Identity, IdentityKind

__all__ = ["ANONYMOUS", "Identity", "IdentityKind"]
