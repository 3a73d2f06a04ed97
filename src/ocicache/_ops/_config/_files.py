"""
The schema of C{[[files]]} (the package repositories and file servers
cached under C{/files/<name>/}, L{ocicache._files}) and of C{[files_cache]}
(their budget); together they make the L{FilesConfig} the front-end reads.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, ClassVar

from attrs import field, frozen
from hyperlink import DecodedURL

from ._fields import key
from ._names import HttpURL
from ._proxy import ProxyURL
from ._secrets import Files
from ._types import POSITIVE, Choice, Duration, Invalid, Kind, ListOf, Refused, Size, Text
from ._values import Credentials

__all__ = ["FileKind", "FilesCacheTable", "FilesConfig", "FilesTable", "RemoteConfig"]

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
"""A remote's name: one path segment, lowercase, no dots at either end."""

MAX_PATTERN = 1000


class FileKind(StrEnum):
    """What a remote serves: it brings the default mutable and immutable patterns."""

    GENERIC = "generic"
    DEB = "deb"
    RPM = "rpm"
    APK = "apk"


@frozen
class RemoteConfig:
    """One C{[[files]]} table."""

    name: str
    url: DecodedURL
    kind: FileKind = FileKind.GENERIC
    credentials: Credentials | None = field(default=None, repr=False)
    mutable: tuple[re.Pattern[str], ...] = ()
    """Paths that match one are mutable, whatever the kind says."""
    immutable: tuple[re.Pattern[str], ...] = ()
    """Paths that match one (and no C{mutable}) are immutable."""
    mutable_ttl: float = 300.0
    max_stale: float = 86400.0
    negative_ttl: float = 30.0
    connect_timeout: float = 10.0
    response_timeout: float = 60.0
    proxy: str | None = None
    """Its outbound proxy URL, C{""} for none; C{None}: C{[proxy]}'s (L{ProxyConfig.routes_for})."""


@frozen
class FilesConfig:
    """Every file remote."""

    remotes: tuple[RemoteConfig, ...] = ()
    max_size: int | None = None
    """C{[files_cache] max_size}: deprecated, and ignored but for a warning ([cache] max_size bounds the files)."""

    def remote_named(self, name: str) -> RemoteConfig | None:
        for remote in self.remotes:
            if remote.name == name:
                return remote
        return None

    @classmethod
    def gathered(cls, remotes: tuple[RemoteConfig, ...]) -> tuple[RemoteConfig, ...]:
        """The remotes, once no two have the same name."""
        for index, remote in enumerate(remotes):
            if any(other.name == remote.name for other in remotes[:index]):
                raise Invalid(f"{remote.name!r} is configured twice", (index, "name"))
        return remotes


@frozen
class Regex(Kind[re.Pattern[str]]):
    """A regular expression (Python's), over a file's path below the remote's URL."""

    name = "regex"

    def __call__(self, value: object) -> re.Pattern[str]:
        if not isinstance(value, str) or not value or len(value) > MAX_PATTERN:
            raise Invalid(f"expected a regular expression of 1 to {MAX_PATTERN} characters")
        try:
            return re.compile(value)
        except re.error as e:
            raise Invalid(f"{value[:80]!r} is not a regular expression: {e}") from None

    def show(self, value: Any) -> object:
        return value.pattern if isinstance(value, re.Pattern) else value


_DEFAULTS = RemoteConfig(name="", url=DecodedURL.from_text("http://defaults"))
_PATTERNS = ListOf(Regex())


@frozen
class FilesTable:
    """
    One [[files]] per package repository or file server, served under
    /files/<name>/<path>. Immutable files are kept until evicted; mutable
    ones (a repository's index, by the kind's defaults or the patterns)
    are revalidated with one conditional GET after mutable_ttl.
    """

    EXAMPLES: ClassVar[str] = ""

    name: str = key(Text(_NAME.fullmatch, "{value} must be lowercase letters, digits, '.', '_' or '-'"),
                    "The path segment after /files/.", required="the path segment after /files/, e.g. 'debian'",
                    example="debian")
    url: DecodedURL = key(HttpURL("username and password_file or password_env"), "Where its files are.",
                          required="e.g. 'http://deb.debian.org/debian'", example="http://deb.debian.org/debian")
    kind: str = key(Choice(tuple(FileKind)), "generic, deb, rpm or apk: the default mutable and immutable patterns.",
                    default=str(_DEFAULTS.kind))
    mutable: tuple[re.Pattern[str], ...] = key(_PATTERNS, "Paths that are mutable, whatever the kind says.",
                                               default=(), example=[".*/Contents-[^/]*"])
    immutable: tuple[re.Pattern[str], ...] = key(_PATTERNS, "Paths that are immutable (unless mutable matches).",
                                                 default=(), example=["pool/.*"])
    mutable_ttl: float = key(Duration(), "A mutable file is revalidated after this.", default=_DEFAULTS.mutable_ttl)
    max_stale: float = key(Duration(), "A mutable file is served stale this long past it while the remote fails.",
                           default=_DEFAULTS.max_stale)
    negative_ttl: float = key(Duration(), "An upstream 404 is remembered this long.", default=_DEFAULTS.negative_ttl)
    connect_timeout: float = key(POSITIVE, "How long a connection may take.", default=_DEFAULTS.connect_timeout)
    response_timeout: float = key(POSITIVE, "How long the remote may take to answer.",
                                  default=_DEFAULTS.response_timeout)
    username: str | None = key(Text(), "Credentials for the remote: the user name.", example="mirror")
    password_file: str | None = key(Text(), "A file whose first line is the password.",
                                    example="/etc/ocicache/files.password")
    password_env: str | None = key(Text(), "An environment variable holding the password.",
                                   example="OCICACHE_FILES_PASSWORD")
    password: None = key(Refused("a literal password is not accepted; use password_file or password_env"), "")
    proxy: str | None = key(ProxyURL(empty=True), 'This remote\'s outbound proxy (see [proxy]); "": direct.',
                            example="http://proxy.internal:3128", shown="[proxy] url")

    def check(self) -> None:
        """The rules between keys, before anything is read."""
        passwords = (self.password_file, self.password_env)
        if self.username is None and passwords != (None, None):
            raise Invalid("a password needs a username")
        if self.username is not None and (None not in passwords or passwords == (None, None)):
            raise Invalid("username needs one of password_file or password_env")

    def build(self, files: Files, where: str) -> RemoteConfig:
        credentials = None
        if self.username is not None:
            credentials = Credentials(self.username, files.secret("password", self.password_file,
                                                                  self.password_env) or "")
        return RemoteConfig(
            name=self.name, url=self.url, kind=FileKind(self.kind), credentials=credentials, mutable=self.mutable,
            immutable=self.immutable, mutable_ttl=self.mutable_ttl, max_stale=self.max_stale,
            negative_ttl=self.negative_ttl, connect_timeout=self.connect_timeout,
            response_timeout=self.response_timeout, proxy=self.proxy,
        )


@frozen
class FilesCacheTable:
    """The stored files of [[files]] remotes (they count in [cache] max_size with every other kind)."""

    max_size: int | None = key(Size(1 << 20, refusal="must be at least 1MiB"),
                               "Deprecated and ignored (a warning at start-up): [cache] max_size bounds the files"
                               " with the blobs and git.", example="20GiB")
