"""
The fleet's view of tags and manifests, the manifest service's seam to the
fleet as L{ocicache._oci._blobs.FleetStep} is the blob service's.

In a fleet (L{SharedManifests}, implemented in L{ocicache._fleet}), a node
whose tag is not fresh first asks what another node checked against the
upstream within C{tag_ttl}, and what one node is asking the upstream now
is waited for (a turn), so that a burst across the nodes costs one
request.  Alone (no C{[fleet]}, or Redis gone) every question answers
"nothing shared" at once: the service asks the upstream as a single node
does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .._spec._reference import Digest
from .._upstream._client import Upstream

__all__ = ["CLOCK_SKEW", "TURN_POLL", "TURN_WAIT", "FleetManifests", "SharedManifests", "SharedTag", "no_turn"]

log = Logger()

T = TypeVar("T")


@frozen
class SharedTag:
    """
    What a node of the fleet found a tag's variant resolves to, and when
    it last checked that against the upstream (seconds since the epoch).
    """

    digest: Digest
    media_type: str
    checked_at: float


def no_turn() -> None:
    """The end of a turn that was never taken (alone, or the shared store gone)."""


TURN_WAIT = 5.0
"""Seconds a node waits for another that is asking the upstream about the same tag or digest."""

TURN_POLL = 0.1
"""Seconds between looks at what the fleet shared, while another node asks the upstream."""

CLOCK_SKEW = 5.0
"""Seconds a shared C{checked_at} may lie ahead of this node's clock and still be believed."""


class SharedManifests(Protocol):
    """
    Tags and manifests shared by a fleet of nodes (L{ocicache._fleet}):
    one node's upstream C{HEAD} or C{GET} spares the others theirs.  Best
    effort: a lookup answers C{None} at once when the shared store cannot
    be asked, and a write may be dropped.  C{key} is a L{variant_key}.
    """

    async def tag(self, upstream: str, repo: str, key: str) -> SharedTag | None: ...

    def put_tag(self, upstream: str, repo: str, key: str, tag: SharedTag, ttl: float) -> None: ...

    async def manifest(self, digest: Digest) -> tuple[str, bytes] | None:
        """The media type and bytes shared under C{digest}, unverified."""

    def put_manifest(self, digest: Digest, media_type: str, body: bytes) -> None: ...

    async def turn(self, upstream: str, repo: str, key: str) -> Callable[[], None] | None:
        """
        This node's turn to ask the upstream about C{key} (a tag's variant
        or a digest) now: what ends it, to be called once the answer is
        shared (the writes before it land first); or C{None} while another
        node has its turn.  A turn, which ends as nothing, when the shared
        store cannot be asked.
        """


class FleetManifests:
    """
    What the fleet shared, and the turns to ask the upstream; every
    answer is "nothing" when there is no fleet (C{shared} is C{None}).
    """

    def __init__(self, shared: SharedManifests | None, reactor: IReactorTime,
                 tag_ttl: Callable[[Upstream], float], max_size: int) -> None:
        self._shared = shared
        self._reactor = reactor
        self._tag_ttl = tag_ttl
        self._max_size = max_size

    @property
    def alone(self) -> bool:
        """Whether there is no fleet to ask."""
        return self._shared is None

    def share(self, upstream: Upstream, repo: str, key: str | None, digest: Digest, media_type: str,
              body: bytes, checked_at: float) -> None:
        """Tell the fleet what the upstream just said: a manifest, and that tag variant C{key} is it."""
        if self._shared is None:
            return
        self._shared.put_manifest(digest, media_type, body)
        if key is not None:
            self._shared.put_tag(upstream.name, repo, key, SharedTag(digest, media_type, checked_at),
                                 self._tag_ttl(upstream))

    async def turn(self, upstream: Upstream, repo: str, key: str,
                   found: Callable[[], Awaitable[T | None]]) -> tuple[T | None, Callable[[], None]]:
        """
        Before this node asks the upstream about C{key} (a tag's variant or
        a digest): if another node of the fleet is asking it now, what that
        node shared (C{found()}, polled until it is there); else this node's
        turn to ask, and what ends it (once the answer is shared).  Waits
        no longer than L{TURN_WAIT}: a node slow to answer costs one more
        upstream request, never an error.
        """
        if self._shared is None:
            return None, no_turn
        deadline = self._reactor.seconds() + TURN_WAIT
        while True:
            end = await self._shared.turn(upstream.name, repo, key)
            if end is not None:
                return None, end
            if self._reactor.seconds() >= deadline:
                return None, no_turn
            await deferLater(self._reactor, TURN_POLL, lambda: None)
            answer = await found()
            if answer is not None:
                return answer, no_turn

    async def tag(self, upstream: Upstream, repo: str, key: str) -> SharedTag | None:
        """The fleet's entry for tag variant C{key}, if a node checked it against the upstream within C{tag_ttl}."""
        if self._shared is None:
            return None
        shared = await self._shared.tag(upstream.name, repo, key)
        if shared is None:
            return None
        age = self._reactor.seconds() - shared.checked_at
        return shared if -CLOCK_SKEW <= age < self._tag_ttl(upstream) else None

    async def manifest(self, digest: Digest) -> tuple[str, bytes] | None:
        """
        The fleet's shared media type and bytes of C{digest}, once they are
        what C{digest} names.
        """
        if self._shared is None:
            return None
        shared = await self._shared.manifest(digest)
        if shared is None:
            return None
        media_type, body = shared
        # Redis is not trusted with content (distribution-spec "Pulling
        # manifests": a manifest's digest is that of its exact bytes).
        if len(body) > self._max_size or not digest.names(body):
            log.warn("Ignoring the fleet's copy of manifest {digest}: it is not what the digest names",
                     digest=str(digest))
            return None
        return media_type, body
