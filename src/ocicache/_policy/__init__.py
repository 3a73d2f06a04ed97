"""
Who may pull what: the one pure function that decides whether an identity
may read a repository of an upstream, and how (by tag, by digest, its tag
list, its referrers, a blob), from the per-upstream patterns and the
C{[[rule]]} list of the config.  No I/O, no Twisted: the web layer asks it
right after routing, before any cache lookup or upstream request, and
raises L{AccessDenied} for a refusal.

The config holds the patterns as validated text; L{Policy.from_config}
compiles each once (L{_patterns.Pattern}).

May import: L{ocicache._spec}, L{ocicache._ops}, L{ocicache._identity}.
"""

from ._errors import AccessDenied
from ._policy import Decision, Policy, ReferenceKind, decide, identity_text

__all__ = ["AccessDenied", "Decision", "Policy", "ReferenceKind", "decide", "identity_text"]
