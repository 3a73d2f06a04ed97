"""
What can go wrong with a git request, as the domain says it: each error
names the registry error it is (code and status), and the web layer
(L{ocicache._web._errors.plain_answer}) turns it into a status and a line
of text that git shows its user.
"""

from __future__ import annotations

from .._fetch._errors import CacheError
from .._spec._errors import ErrorCode

__all__ = ["BadGitRequest", "GitDenied", "GitUpstreamFailed", "NoSuchGitHost", "PushRefused", "RequestTooLarge"]


class GitError(CacheError):
    """A git request that cannot be answered; C{str()} is safe to show."""


class NoSuchGitHost(GitError):
    """The host after C{/git/} is not a configured C{[[git]]} upstream."""

    code = ErrorCode.NAME_UNKNOWN
    status = 404


class BadGitRequest(GitError):
    """A path, query, header or body outside the smart-HTTP grammar."""

    code = ErrorCode.UNSUPPORTED
    status = 400


class PushRefused(GitError):
    """C{git-receive-pack}: ocicache is a read-only mirror."""

    code = ErrorCode.DENIED
    status = 403


class RequestTooLarge(GitError):
    """A request body past the bound on what one request may make the daemon read."""

    code = ErrorCode.UNSUPPORTED
    status = 413


class GitDenied(GitError):
    """
    The upstream refused the client's credentials (401, with its
    challenge, so that git asks for them) or its access (403, 404).
    """

    code = ErrorCode.DENIED

    def __init__(self, message: str, status: int, challenge: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.challenge = challenge

    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        if self.status != 401:
            return ()
        # RFC 9110 §15.5.2: a 401 carries a challenge; the upstream's, so
        # that git asks its credential helper for that realm.
        return ((b"www-authenticate", self.challenge or b'Basic realm="ocicache"'),)


class GitUpstreamFailed(GitError):
    """The upstream gave no usable answer (down, 5xx, not smart HTTP)."""

    code = ErrorCode.UPSTREAM_UNAVAILABLE
    status = 502
