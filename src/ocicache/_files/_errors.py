"""
What goes wrong with a file: each error names the registry error it is,
and the web layer answers it in one place (L{ocicache._web._errors}).
"""

from __future__ import annotations

from .._fetch._errors import CacheError
from .._spec._errors import ErrorCode

__all__ = ["BadPath", "FileUnknown", "RemoteUnknown"]


class BadPath(CacheError):
    """The path is outside the grammar (a traversal, an encoded slash, ...): 400."""

    code = ErrorCode.NAME_INVALID
    status = 400


class RemoteUnknown(CacheError):
    """No C{[[files]]} remote has that name: 404, and nothing is fetched."""

    code = ErrorCode.NAME_UNKNOWN
    status = 404


class FileUnknown(CacheError):
    """The remote answered 404 (remembered for its C{negative_ttl})."""

    code = ErrorCode.BLOB_UNKNOWN
    status = 404
