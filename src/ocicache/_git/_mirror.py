"""
Mirror mode (C{mode = "mirror"}): a bare mirror of each repository
(under C{<cache dir>/git-mirrors/}, counted toward C{max_size} by
L{GitBooks}),
fetched from the upstream with the configured credentials, and
upload-pack requests answered by a local C{git upload-pack
--stateless-rpc}, so that a fetch with any haves is served locally (the
way block/cachew and goblet do).

A request's wants are looked up in the mirror first (C{git cat-file
--batch-check}); wants it lacks trigger one mirror fetch per repository
however many clients ask; wants still missing after it (a ref the
upstream does not have any more: "not our ref") leave the request to the
upstream.  Every git runs as a subprocess through Twisted's process API:
the reactor never waits for one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger

from .._fetch._key import Verifier
from .._fetch._passthrough import PassThrough
from .._fetch._singleflight import SingleFlight
from .._spec._reference import Digest
from .._storage._disk import Disk
from ._books import GitBooks, mirror_path
from ._key import ResponseKey, Unchecked
from ._pktline import PackResponseCheck
from ._process import run, stream
from ._upstream import GitUpstream

__all__ = ["Mirrors"]

log = Logger()


class Mirrors:
    """The bare mirrors under C{<cache dir>/git-mirrors/}, one per upstream repository."""

    def __init__(self, disk: Disk, books: GitBooks, git: str | None = None,
                 on_fetch: Callable[[str, str], None] = lambda upstream, outcome: None) -> None:
        """
        @param books: where each mirror's size is counted toward
            C{max_size}, and its reads toward its TTL.
        """
        self._disk = disk
        self._books = books
        self._root = disk.store.root
        self._reactor: Any = disk.reactor
        self._git = git or shutil.which("git") or "git"
        self._flights: SingleFlight[str, None] = SingleFlight()
        self._on_fetch = on_fetch

    @staticmethod
    def digest(upstream: GitUpstream, repo: str) -> Digest:
        # A hash names the directory: no client-chosen text reaches the filesystem.
        return Digest("sha256", hashlib.sha256(f"{upstream.name}\0{repo}".encode()).hexdigest())

    def _env(self, protocol: bytes | None = None, upstream: GitUpstream | None = None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self._root,
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
        if protocol is not None:
            env["GIT_PROTOCOL"] = protocol.decode("ascii")
        credentials = upstream.config.credentials if upstream is not None else None
        if credentials is not None:
            # Through the environment (git 2.31+), never the command line that ps shows.
            token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
            env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"})
        return env

    async def ready(self, upstream: GitUpstream, repo: str, wants: Sequence[str]) -> str | None:
        """
        The mirror's directory once it has every wanted object (fetching
        it at most once for this call), or C{None}: ask the upstream.
        """
        digest = self.digest(upstream, repo)
        path = mirror_path(self._root, digest)
        if not await self._has(path, wants):
            flight, _ = self._flights.call(path, lambda: self._fetch(upstream, repo, digest, path))
            await flight
            if not await self._has(path, wants):
                return None
        self._books.capacity.accessed(digest)
        return path

    async def _has(self, path: str, wants: Sequence[str]) -> bool:
        if not os.path.isdir(path):
            return False
        checked = await run(self._reactor, [self._git, "--git-dir", path, "cat-file", "--batch-check"],
                            self._env(), ("\n".join(wants) + "\n").encode())
        return checked.code == 0 and b" missing" not in checked.out

    async def _fetch(self, upstream: GitUpstream, repo: str, digest: Digest, path: str) -> None:
        url = upstream.url_of(repo)
        if os.path.isdir(path):
            argv = [self._git, "--git-dir", path, "fetch", "--prune", "--quiet", "origin"]
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            argv = [self._git, "clone", "--mirror", "--quiet", url, path]
        done = await run(self._reactor, argv, self._env(upstream=upstream))
        outcome = "ok" if done.code == 0 else "failed"
        self._on_fetch(upstream.name, outcome)
        if done.code != 0:
            lines = done.err.decode("utf-8", "replace").strip().splitlines()
            log.warn("Mirror fetch of {upstream}/{repo} failed: {error}", upstream=upstream.name, repo=repo,
                     error=lines[-1][:200] if lines else f"exit status {done.code}")
        if os.path.isdir(path) and not await self._books.keep_mirror(digest):
            # Larger than max_size allows: not kept, its requests go upstream.
            log.warn("Not keeping the mirror of {upstream}/{repo}: no room for it within max_size",
                     upstream=upstream.name, repo=repo)
            await self._disk.run(shutil.rmtree, path, True)

    def serve(self, path: str, protocol: bytes | None, body: bytes, whole: bool) -> PassThrough:
        """
        The local upload-pack's answer to C{body}, streamed as it comes;
        checked as a kept response is when it carries a pack (C{whole}).
        """
        verifier: Verifier = PackResponseCheck() if whole else Unchecked()
        sink = PassThrough(ResponseKey.of("mirror", path, "", body), None, verifier=verifier).acquire()
        argv = [self._git, "-c", "uploadpack.allowFilter=true", "-c", "uploadpack.allowReachableSHA1InWant=true",
                "upload-pack", "--stateless-rpc", path]
        stream(self._reactor, argv, self._env(protocol), body, sink)
        return sink
