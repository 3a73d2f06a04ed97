"""
What goes wrong with a file: the web layer maps each to an HTTP answer in
one place (L{ocicache._web._errors}).
"""

from __future__ import annotations

from .._fetch._errors import CacheError

__all__ = ["BadPath", "FileUnknown", "RemoteUnknown"]


class BadPath(CacheError):
    """The path is outside the grammar (a traversal, an encoded slash, ...): 400."""


class RemoteUnknown(CacheError):
    """No C{[[files]]} remote has that name: 404, and nothing is fetched."""


class FileUnknown(CacheError):
    """The remote answered 404 (remembered for its C{negative_ttl})."""
