"""
What can go wrong with a git request, as the domain says it; the web layer
(L{ocicache._web._errors.git_answer}) turns each into a status and a line
of text that git shows its user.
"""

from __future__ import annotations

__all__ = ["BadGitRequest", "GitDenied", "GitUpstreamFailed", "NoSuchGitHost", "PushRefused", "RequestTooLarge"]


class GitError(Exception):
    """A git request that cannot be answered; C{str()} is safe to show."""


class NoSuchGitHost(GitError):
    """The host after C{/git/} is not a configured C{[[git]]} upstream."""


class BadGitRequest(GitError):
    """A path, query, header or body outside the smart-HTTP grammar."""


class PushRefused(GitError):
    """C{git-receive-pack}: ocicache is a read-only mirror."""


class RequestTooLarge(GitError):
    """A request body past the bound on what one request may make the daemon read."""


class GitDenied(GitError):
    """
    The upstream refused the client's credentials (401, with its
    challenge, so that git asks for them) or its access (403, 404).
    """

    def __init__(self, message: str, status: int, challenge: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.challenge = challenge


class GitUpstreamFailed(GitError):
    """The upstream gave no usable answer (down, 5xx, not smart HTTP)."""
