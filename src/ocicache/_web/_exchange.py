"""
L{Exchange}: what one request under C{/v2/} did, filled in as it goes,
for its access event and its metrics.
"""

from __future__ import annotations

from attrs import define

from .._fetch._result import CacheResult
from .._identity import ANONYMOUS, Identity

__all__ = ["Exchange"]


@define
class Exchange:
    """What one request did, for its access event and its metrics."""

    route: str = "other"
    result: CacheResult | None = None
    upstream: str | None = None
    bytes: int = 0
    finished: bool = False
    """Whether the response ended, or the client went away."""
    identity: Identity = ANONYMOUS
    """Who the client proved to be; what the policy decides on."""
