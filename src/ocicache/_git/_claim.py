"""
The fleet's step around a git miss, as the git front-end sees it: before
a node asks the upstream for a response, it claims the entry's fill lock;
the claim says whether the body comes from another node instead
(L{ocicache._fleet._fleet.FleetArea} implements it over Redis).  A single node
has L{ALONE}.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web.iweb import IResponse

from .._spec._reference import Digest

__all__ = ["ALONE", "GitClaim", "GitFleet"]


class GitClaim(Protocol):
    """What the fleet decided for one miss: where its body comes from (L{ocicache._fleet})."""

    @property
    def peer(self) -> IResponse | None:
        """Another node's 200 response with the body, or C{None}: ask the upstream."""

    @property
    def shared(self) -> bool:
        """Whether the fleet coordinated this fill: another node may have completed it in the bucket meanwhile."""

    def done(self, committed: int | None) -> None:
        """This node's fill settled: committed with this size, or not (C{None})."""


class GitFleet(Protocol):
    """The fleet's step around a miss, for git responses (named by their key's digest)."""

    async def claim(self, digest: Digest) -> GitClaim: ...


class _Alone:
    """A single node: every miss asks the upstream."""

    peer = None
    shared = False

    def done(self, committed: int | None) -> None:
        pass

    async def claim(self, digest: Digest) -> GitClaim:
        return self


ALONE = _Alone()
