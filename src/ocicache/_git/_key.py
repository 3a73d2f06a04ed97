"""
The name of a kept upload-pack response: a SHA-256 of what makes the
response what it is (content-cache's key, with a hash ocicache already
uses): the repository, the C{Git-Protocol} header and the decompressed
request body.  Identity is deliberately not in it (GitLab found that it
destroys the hit ratio); access is checked per request instead
(L{ocicache._git._refs.AccessProofs}).
"""

from __future__ import annotations

import hashlib

from attrs import frozen

from .._spec._reference import Digest
from ._pktline import PackResponseCheck

__all__ = ["ResponseKey", "Unchecked"]


@frozen
class ResponseKey:
    """A L{ocicache._fetch._key.Key}: stored as C{git/sha256/<hex>}."""

    encoded: str
    algorithm: str = "sha256"

    @classmethod
    def of(cls, upstream: str, repo: str, protocol: str, body: bytes) -> ResponseKey:
        request = hashlib.sha256()
        for part in (upstream.encode(), repo.encode(), protocol.encode()):
            request.update(b"%d:" % len(part) + part)
        request.update(body)
        return cls(request.hexdigest())

    @classmethod
    def from_digest(cls, digest: Digest) -> ResponseKey:
        return cls(digest.encoded, digest.algorithm)

    @property
    def digest(self) -> Digest:
        """The same name as a L{Digest}: what the store's books (L{Capacity}) are keyed by."""
        return Digest(self.algorithm, self.encoded)

    def verifier(self) -> PackResponseCheck:
        return PackResponseCheck()

    def __str__(self) -> str:
        return f"git response {self.encoded[:16]}"


class Unchecked:
    """
    The verifier of a body passed through and never kept (a ref answer,
    a negotiation round): whatever the upstream sent is what it said.
    """

    def update(self, data: bytes) -> None:
        pass

    def mismatch(self) -> str | None:
        return None
