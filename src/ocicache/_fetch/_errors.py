"""
The base of the errors the fetch core and its front-ends raise.  The web
layer maps each to an HTTP answer in one place (L{ocicache._web._errors}).
"""

from __future__ import annotations

__all__ = ["CacheError"]


class CacheError(Exception):
    """The base of the cache's errors; the message is safe to show."""
