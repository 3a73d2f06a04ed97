"""
Who a client is: the identity a request proves (static bearer token,
htpasswd Basic, ocicache's own signed token, or an OIDC workload token),
checked before any routing, cache lookup or upstream request.

Its verifiers raise domain errors (L{ocicache._identity._errors}); the web
layer maps them to C{401 UNAUTHORIZED} or C{403 DENIED}.

    _identity.py       the Identity value verifiers produce and the policy reads
    _authenticator.py  the one object the web layer asks, built from [auth]
    _static.py         static bearer tokens (by SHA-256)
    _htpasswd.py       bcrypt Basic credentials: in threads, memoised
    _issuer.py         ocicache's own tokens for the registry token flow
    _oidc.py           OIDC workload JWTs and the issuers' JWKS
    _jwt.py            what the JWT verifiers share
    _memo.py           the bounded, expiring memo of credentials already proven
    _auth_files.py     the files [auth] names: tokens, htpasswd, JWKS, the token key
                       (a leaf: the config reads them with it at load)
    _errors.py         Unauthenticated, Denied

May import: L{ocicache._spec}, L{ocicache._ops}.
"""

from ._identity import ANONYMOUS, Identity, IdentityKind

__all__ = ["ANONYMOUS", "Identity", "IdentityKind"]
