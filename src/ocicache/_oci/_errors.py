"""
Why the image mirror cannot give a client what it asked for, each with the
distribution-spec error it is ("Error Codes"); the web layer answers them
in one place (L{ocicache._web._errors}).  Failures of the upstream itself
arrive as L{ocicache._upstream._errors.UpstreamError}s.
"""

from __future__ import annotations

from .._fetch._errors import CacheError, Described, StoreUnavailable
from .._spec._errors import ErrorCode

__all__ = [
    "BlobUnknown",
    "CacheError",
    "DigestMismatch",
    "ManifestTooLarge",
    "ManifestUnknown",
    "PinRefused",
    "RepositoryUnknown",
    "StoreUnavailable",
]


class BlobUnknown(Described):
    """The upstream does not have the blob in that repository."""

    code = ErrorCode.BLOB_UNKNOWN


class ManifestUnknown(Described):
    """The upstream does not have the manifest or tag in that repository."""

    code = ErrorCode.MANIFEST_UNKNOWN


class RepositoryUnknown(Described):
    """The upstream does not have the repository (its tag list is a 404)."""

    code = ErrorCode.NAME_UNKNOWN


# The upstream's fault, never a 500 of ours: 502 Bad Gateway (RFC 9110 §15.6.3).


class DigestMismatch(Described):
    """The upstream sent bytes that are not the content they claim to be."""

    code = ErrorCode.DIGEST_INVALID
    status = 502


class ManifestTooLarge(Described):
    """The upstream sent a manifest over ocicache's limit."""

    code = ErrorCode.MANIFEST_INVALID
    status = 502


class PinRefused(Described):
    """
    A pin's closure cannot fit within C{max_size} beside the other pins:
    the operator's request conflicts with the store's limit (RFC 9110
    §15.5.10).
    """

    code = ErrorCode.DENIED
    status = 409
