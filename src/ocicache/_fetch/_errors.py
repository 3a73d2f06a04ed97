"""
The base of the errors the fetch core and its front-ends raise.  Each says
which distribution-spec error code (and, where it is not the code's own,
which HTTP status) it is; the web layer turns them into answers in one
place (L{ocicache._web._errors}), without knowing each front-end.
"""

from __future__ import annotations

from typing import ClassVar

from attrs import frozen

from .._spec._errors import ErrorCode

__all__ = ["CacheError", "Described", "FilledElsewhere", "NotHere", "StoreUnavailable"]


class CacheError(Exception):
    """
    The base of the cache's errors; the message is safe to show.

    @cvar code: the distribution-spec error code a client is answered with.
    @ivar status: the HTTP status, when not the code's own (0).
    """

    code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN
    status: int = 0

    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """Header fields the answer carries (a 401's challenge)."""
        return ()


@frozen
class Described(CacheError):
    """A cache error that is its message."""

    message: str

    def __str__(self) -> str:
        return self.message


class StoreUnavailable(Described):
    """The cache directory cannot take a download now (gone, full, read-only)."""

    # Ours, and passing: 503 Service Unavailable (RFC 9110 §15.6.4).
    code = ErrorCode.UPSTREAM_UNAVAILABLE
    status = 503


class NotHere(Exception):
    """
    A tier that found an entry could not serve it after all (the S3 store
    went away between its C{HEAD} and its C{GET}): the walk goes on, and a
    lookup that joined that tier's fill starts one of its own.
    """


class FilledElsewhere(NotHere):
    """
    Another process on this store took the entry's lock first: the walk
    looks again, and follows that process's fill
    (L{ocicache._fetch._elsewhere}).
    """
