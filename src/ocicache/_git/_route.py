"""
The smart-HTTP paths ocicache serves (git's gitprotocol-http(5)):

    GET  /git/<host>/<path>.git/info/refs?service=git-upload-pack
    POST /git/<host>/<path>.git/git-upload-pack

Everything is checked here against a grammar before anything touches the
disk or the network: the host must be a configured C{[[git]]} upstream,
and the repository path is a few plain segments (no C{..}, no
percent-encoding, no empty segment), so it can only name a repository
under the upstream's URL.  C{git-receive-pack} (push) is refused here,
before anything reaches the upstream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum

from attrs import frozen

from ._config import GitConfig, GitUpstreamConfig
from ._errors import BadGitRequest, NoSuchGitHost, PushRefused

__all__ = ["GitEndpoint", "GitRoute", "route_git"]

MAX_SEGMENTS = 16
"""Path segments a repository path may have (GitLab nests groups up to 20; 16 leaves room in the URL)."""

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
"""
One segment of a repository path: the characters GitHub, GitLab and
Gitea allow in owner and repository names; never C{.} or C{..} (the first
character is not a dot).
"""

UPLOAD_PACK = "git-upload-pack"
RECEIVE_PACK = "git-receive-pack"
PUSH_MESSAGE = "ocicache is a read-only git mirror: push to the upstream itself, not through ocicache"


class GitEndpoint(StrEnum):
    REFS = "info/refs"
    """The ref advertisement (v0/v1) or capability advertisement (v2)."""
    UPLOAD_PACK = "git-upload-pack"
    """A fetch: negotiation, ls-refs (v2), or the pack."""


@frozen
class GitRoute:
    """
    A validated git request: C{repo} is the repository's path under the
    upstream's URL, as the client wrote it (with or without C{.git}).
    """

    upstream: GitUpstreamConfig
    repo: str
    endpoint: GitEndpoint


def route_git(segments: Sequence[bytes], method: bytes, args: Mapping[bytes, Sequence[bytes]],
              config: GitConfig) -> GitRoute:
    """
    Route the raw (not percent-decoded) path segments after C{/git/}.
    Raises L{PushRefused}, L{NoSuchGitHost} or L{BadGitRequest}.
    """
    if len(segments) > MAX_SEGMENTS + 4:
        raise BadGitRequest("the repository path is too long")
    try:
        parts = [segment.decode("ascii") for segment in segments]
    except UnicodeDecodeError:
        raise BadGitRequest("the repository path is not ASCII") from None
    services = args.get(b"service", ())
    if RECEIVE_PACK in parts[-1:] or RECEIVE_PACK.encode() in services:
        # Push, refused before the host is even looked up: nothing of it
        # reaches any upstream.
        raise PushRefused(PUSH_MESSAGE)
    if len(parts) >= 2 and parts[-2:] == ["info", "refs"]:
        endpoint, repo_parts = GitEndpoint.REFS, parts[1:-2]
        if method not in (b"GET", b"HEAD"):
            raise BadGitRequest("info/refs is read with GET")
        if list(services) != [UPLOAD_PACK.encode()] or set(args) != {b"service"}:
            # Dumb HTTP (no service) is not served: ocicache caches the smart protocol.
            raise BadGitRequest("ask for info/refs?service=git-upload-pack (smart HTTP)")
    elif parts[-1:] == [UPLOAD_PACK]:
        endpoint, repo_parts = GitEndpoint.UPLOAD_PACK, parts[1:-1]
        if method != b"POST":
            raise BadGitRequest("git-upload-pack is called with POST")
        if args:
            raise BadGitRequest("git-upload-pack takes no query")
    else:
        raise NoSuchGitHost("not a smart-HTTP git path: /git/<host>/<repository>.git/info/refs or .../git-upload-pack")
    host = parts[0].lower() if parts else ""
    upstream = config.named(host)
    if upstream is None:
        raise NoSuchGitHost(f"ocicache has no git upstream named {host[:100]!r}")
    if not repo_parts or len(repo_parts) > MAX_SEGMENTS:
        raise BadGitRequest("give a repository path such as /git/<host>/<owner>/<name>.git")
    for segment in repo_parts:
        if _SEGMENT.fullmatch(segment) is None:
            raise BadGitRequest(f"{segment[:100]!r} is not a repository path segment")
    return GitRoute(upstream, "/".join(repo_parts), endpoint)
