"""
Whether a tag or a tag list is served stale when its upstream fails
(RFC 5861 §4, stale-if-error), by the upstream's L{StalePolicy}.

One pure function decides, from the policy, the failure and how long ago
the upstream last vouched for what the cache holds; the manifest and tag
list services only ask it.
"""

from __future__ import annotations

from .._ops._config import StalePolicy
from .._upstream._errors import UpstreamDenied, UpstreamRateLimited, UpstreamUnavailable
from ._errors import ManifestUnknown, RepositoryUnknown

__all__ = ["failure_class", "serves_stale"]


def failure_class(error: BaseException) -> str | None:
    """
    The C{stale_on} value (L{ocicache._ops._config.STALE_FAILURES}) that
    C{error} falls under, or C{None} for one that is never served stale for.
    """
    match error:
        case UpstreamUnavailable(kind=kind):
            return str(kind)
        case UpstreamRateLimited():
            return "429"
        case UpstreamDenied(status=status):
            return str(status)
    return None


def serves_stale(policy: StalePolicy, error: BaseException, age: float) -> bool:
    """
    Whether to answer with what the cache holds, C{age} seconds after the
    upstream last confirmed it, instead of C{error}: an upstream failure,
    or the upstream's 404 for it (L{ManifestUnknown}, L{RepositoryUnknown}).
    """
    if age > policy.max_stale:
        return False
    if isinstance(error, (ManifestUnknown, RepositoryUnknown)):
        return policy.on_404 == "keep"
    failure = failure_class(error)
    return failure is not None and failure in policy.stale_on
