"""
The schema of C{[[git]]}: the git hosts served under C{/git/<name>/}
(L{ocicache._git}); each table builds its L{GitUpstreamConfig}, and the
tables together a L{GitConfig}.
"""

from __future__ import annotations

import re
import shutil
from typing import ClassVar

from attrs import frozen
from hyperlink import DecodedURL

from ._fields import key
from ._names import HttpURL
from ._proxy import ProxyURL
from ._secrets import Files
from ._types import BOOLEAN, POSITIVE, Choice, Invalid, Refused, Text
from ._values import Credentials

__all__ = ["MODES", "GitConfig", "GitTable", "GitUpstreamConfig"]

_HOST = re.compile(r"(?=.{1,253}(?::|$))[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
                   r"(?::[0-9]{1,5})?")
"""A host name with an optional port (RFC 3986 §3.2.2, lower case): the first path segment after C{/git/}."""

MODES = ("cache", "mirror")
"""What a git upstream's C{mode} may be."""


@frozen
class GitUpstreamConfig:
    """
    One git host.  C{name} is what clients write after C{/git/}; C{url}
    is where its repositories are (C{<url>/<path>.git/info/refs}).
    """

    name: str
    url: DecodedURL
    mode: str = "cache"
    stale_refs: bool = False
    """Whether a ref request may be answered from the last advertisement when the upstream is down."""
    max_stale: float = 86400.0
    """Seconds past which a remembered advertisement is not served stale."""
    proof_ttl: float = 60.0
    """Seconds a client's proven access to a repository is reused before it is asked again."""
    pack_ttl: float = 86400.0
    """Seconds an upload-pack response is kept unread."""
    tls_verify: bool = True
    connect_timeout: float = 10.0
    response_timeout: float = 60.0
    credentials: Credentials | None = None
    """What a mirror fetches with (C{mode = "mirror"}); clients always use their own."""
    proxy: str | None = None
    """Its outbound proxy URL, C{""} for none; C{None}: C{[proxy]}'s (L{ProxyConfig.routes_for})."""


@frozen
class GitConfig:
    """Every C{[[git]]} table, in order."""

    upstreams: tuple[GitUpstreamConfig, ...] = ()

    @classmethod
    def gathered(cls, upstreams: tuple[GitUpstreamConfig, ...]) -> GitConfig:
        """The tables, once no two name the same host."""
        for index, upstream in enumerate(upstreams):
            if any(other.name == upstream.name for other in upstreams[:index]):
                raise Invalid(f"{upstream.name!r} is configured twice", (index, "name"))
        return cls(upstreams)

    def named(self, name: str) -> GitUpstreamConfig | None:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        return None


_DEFAULTS = GitUpstreamConfig(name="", url=DecodedURL.from_text("https://defaults"))


@frozen
class GitTable:
    """
    One [[git]] per git host whose repositories are cached under
    /git/<name>/. Clients: git config --global
    url."http://mirror:5000/git/github.com/".insteadOf https://github.com/
    """

    EXAMPLES: ClassVar[str] = ""

    name: str = key(Text(_HOST.fullmatch, "{value} is not a lower-case host name such as 'github.com'"),
                    "The host clients write after /git/.", required="the host clients write after /git/,"
                    " e.g. 'github.com'", example="github.com")
    url: DecodedURL = key(HttpURL("username and password_file or password_env"), "Where its repositories live.",
                          required="e.g. 'https://github.com'", example="https://github.com")
    mode: str = key(Choice(MODES), '"cache": upload-pack responses; "mirror": a bare mirror per repository'
                    " (needs git).", default=_DEFAULTS.mode)
    stale_refs: bool = key(BOOLEAN, "Serve the last ref advertisement while the host is down.",
                           default=_DEFAULTS.stale_refs)
    max_stale: float = key(POSITIVE, "No advertisement is served stale older than this.",
                           default=_DEFAULTS.max_stale)
    proof_ttl: float = key(POSITIVE, "How long a client's proven access to a repository is reused.",
                           default=_DEFAULTS.proof_ttl)
    pack_ttl: float = key(POSITIVE, "How long an upload-pack response is kept unread.", default=_DEFAULTS.pack_ttl)
    tls_verify: bool = key(BOOLEAN, "Verify the host's certificate.", default=_DEFAULTS.tls_verify)
    connect_timeout: float = key(POSITIVE, "How long a connection may take.", default=_DEFAULTS.connect_timeout)
    response_timeout: float = key(POSITIVE, "How long the host may take to answer.",
                                  default=_DEFAULTS.response_timeout)
    username: str | None = key(Text(), "A mirror's own credentials: the user name (clients use their own).",
                               example="mirror-bot")
    password_file: str | None = key(Text(), "A file whose first line is the password.",
                                    example="/etc/ocicache/git.password")
    password_env: str | None = key(Text(), "An environment variable holding the password.",
                                   example="OCICACHE_GIT_PASSWORD")
    password: None = key(Refused("a literal password is not accepted; use password_file or password_env"), "")
    proxy: str | None = key(ProxyURL(empty=True), 'This host\'s outbound proxy (see [proxy]); "": direct.',
                            example="http://proxy.internal:3128", shown="[proxy] url")

    def check(self) -> None:
        """The rules between keys, before anything is read."""
        passwords = (self.password_file, self.password_env)
        if None not in passwords:
            raise Invalid("set password_file or password_env, not both")
        if (self.username is None) != (passwords == (None, None)):
            raise Invalid("set username and password_file or password_env together")
        if self.username is not None and self.mode != "mirror":
            raise Invalid("only a mode = 'mirror' upstream fetches with its own credentials", ("username",))

    def build(self, files: Files, where: str) -> GitUpstreamConfig:
        if self.mode == "mirror" and shutil.which("git") is None:
            raise Invalid("mirror needs the git program on PATH (apt-get install git)", ("mode",))
        credentials = None
        if self.username is not None:
            password = files.secret("password", self.password_file, self.password_env)
            credentials = Credentials(self.username, password or "")
        return GitUpstreamConfig(
            name=self.name, url=self.url, mode=self.mode, stale_refs=self.stale_refs, max_stale=self.max_stale,
            proof_ttl=self.proof_ttl, pack_ttl=self.pack_ttl, tls_verify=self.tls_verify,
            connect_timeout=self.connect_timeout, response_timeout=self.response_timeout, credentials=credentials,
            proxy=self.proxy,
        )
