"""
The base of the errors the fetch core and its front-ends raise.  The web
layer maps each to an HTTP answer in one place (L{ocicache._web._errors}).
"""

from __future__ import annotations

__all__ = ["CacheError", "NotHere"]


class CacheError(Exception):
    """The base of the cache's errors; the message is safe to show."""


class NotHere(Exception):
    """
    A tier that found an entry could not serve it after all (the S3 store
    went away between its C{HEAD} and its C{GET}): the walk goes on, and a
    lookup that joined that tier's fill starts one of its own.
    """
