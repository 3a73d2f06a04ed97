"""How a git request was answered: the C{result} label of the git metrics and the access log."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["GitResult"]


class GitResult(StrEnum):
    HIT = "hit"
    """A kept upload-pack response, sent from the store."""
    MISS = "miss"
    """This request fetched the response from the upstream, and it is kept."""
    COALESCED = "coalesced"
    """This request joined a response on its way from the upstream."""
    PASSTHROUGH = "passthrough"
    """Not kept (refs, ls-refs, a negotiation round): passed from the upstream."""
    STALE = "stale"
    """The upstream was down: the last ref advertisement, as C{stale_refs} allows."""
    MIRROR = "mirror"
    """Answered by the local mirror (mode = "mirror")."""
