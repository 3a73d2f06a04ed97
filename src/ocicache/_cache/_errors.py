"""
Why the cache cannot give a client what it asked for.  The web layer maps
each of these to a distribution-spec error in one place
(L{ocicache._web._errors}); failures of the upstream itself arrive as
L{ocicache._upstream._errors.UpstreamError}s.
"""

from __future__ import annotations

from attrs import frozen

from .._fetch._errors import CacheError

__all__ = [
    "PinRefused",
    "BlobUnknown",
    "CacheError",
    "DigestMismatch",
    "ManifestUnknown",
    "RepositoryUnknown",
    "StoreUnavailable",
    "ManifestTooLarge",
]


@frozen
class _Described(CacheError):
    message: str

    def __str__(self) -> str:
        return self.message


class BlobUnknown(_Described):
    """The upstream does not have the blob in that repository."""


class ManifestUnknown(_Described):
    """The upstream does not have the manifest or tag in that repository."""


class RepositoryUnknown(_Described):
    """The upstream does not have the repository (its tag list is a 404)."""


class DigestMismatch(_Described):
    """The upstream sent bytes that are not the content they claim to be."""


class ManifestTooLarge(_Described):
    """The upstream sent a manifest over ocicache's limit."""


class StoreUnavailable(_Described):
    """The cache directory cannot take a download now (gone, full, read-only)."""


class PinRefused(_Described):
    """A pin's closure cannot fit within C{max_size} beside the other pins."""
