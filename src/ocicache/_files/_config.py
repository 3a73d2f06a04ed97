"""
The C{[[files]]} remotes and the C{[files_cache]} table: which package
repositories and file servers ocicache caches, and how long their mutable
files stay fresh.

    [files_cache]
    max_size = "20GiB"          # the files' own budget (unset: unbounded)

    [[files]]
    name = "debian"             # served under /files/debian/<path>
    url = "http://deb.debian.org/debian"
    kind = "deb"                # generic, deb, rpm or apk: the default patterns
    mutable_ttl = "5m"          # a mutable file is revalidated after this
    max_stale = "1d"            # served stale this long past it when the remote fails
    negative_ttl = "30s"        # an upstream 404 is remembered this long
    mutable = ['.*/Contents-[^/]*']     # regular expressions over the path,
    immutable = ['pool/.*']             # overriding the kind's defaults
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import StrEnum

from attrs import field, frozen
from hyperlink import DecodedURL

from .._ops._config import ConfigError, Credentials, parse_duration, parse_size

__all__ = ["FileKind", "FilesConfig", "RemoteConfig", "parse_files"]

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
"""A remote's name: one path segment, lowercase, no dots at either end."""

MUTABLE_TTL = 300.0
MAX_STALE = 86400.0
NEGATIVE_TTL = 30.0
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
    mutable_ttl: float = MUTABLE_TTL
    max_stale: float = MAX_STALE
    negative_ttl: float = NEGATIVE_TTL
    connect_timeout: float = 10.0
    response_timeout: float = 60.0


@frozen
class FilesConfig:
    """Every file remote, and the budget of their stored files."""

    remotes: tuple[RemoteConfig, ...] = ()
    max_size: int | None = None

    def remote_named(self, name: str) -> RemoteConfig | None:
        for remote in self.remotes:
            if remote.name == name:
                return remote
        return None


def parse_files(tables: object, cache: object, environ: Mapping[str, str] | None = None) -> FilesConfig:
    """
    Validate the C{[[files]]} list and the C{[files_cache]} table; every
    error names its key (C{files[0].url: ...}).
    """
    environ = os.environ if environ is None else environ
    if not isinstance(tables, list):
        raise ConfigError("files: expected a list of [[files]] tables")
    remotes = tuple(_parse_remote(table, index, environ) for index, table in enumerate(tables))
    seen: set[str] = set()
    for index, remote in enumerate(remotes):
        if remote.name in seen:
            raise ConfigError(f"files[{index}].name: {remote.name!r} is configured twice")
        seen.add(remote.name)
    section = _Table(cache, "files_cache")
    max_size = section.take("max_size")
    section.finish()
    size: int | None = None
    if max_size is not None:
        try:
            size = parse_size(max_size)
        except ValueError as e:
            raise ConfigError(f"files_cache.max_size: {e}") from None
        if size < 1 << 20:
            raise ConfigError("files_cache.max_size: must be at least 1MiB")
    return FilesConfig(remotes, size)


class _Table:
    """The keys of one TOML table, each taken once; what is left is a typo."""

    def __init__(self, table: object, path: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{path}: expected a table")
        self._table = dict(table)
        self.path = path

    def take(self, name: str) -> object:
        return self._table.pop(name, None)

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self._table.pop(name, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self.path}.{name}: expected a string")
        return value

    def duration(self, name: str, default: float) -> float:
        value = self._table.pop(name, None)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise ConfigError(f"{self.path}.{name}: {e}") from None
        return seconds

    def patterns(self, name: str) -> tuple[re.Pattern[str], ...]:
        value = self._table.pop(name, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self.path}.{name}: expected a list of regular expressions")
        compiled = []
        for number, text in enumerate(value):
            key = f"{self.path}.{name}[{number}]"
            if not isinstance(text, str) or not text or len(text) > MAX_PATTERN:
                raise ConfigError(f"{key}: expected a regular expression of 1 to {MAX_PATTERN} characters")
            try:
                compiled.append(re.compile(text))
            except re.error as e:
                raise ConfigError(f"{key}: {text!r} is not a regular expression: {e}") from None
        return tuple(compiled)

    def finish(self) -> None:
        if self._table:
            raise ConfigError(f"{self.path}: unknown key(s): {', '.join(sorted(self._table))}")


def _parse_remote(table: object, index: int, environ: Mapping[str, str]) -> RemoteConfig:
    path = f"files[{index}]"
    section = _Table(table, path)
    name = section.string("name")
    if name is None:
        raise ConfigError(f"{path}.name: required (the path segment after /files/, e.g. 'debian')")
    if _NAME.fullmatch(name) is None:
        raise ConfigError(f"{path}.name: {name!r} must be lowercase letters, digits, '.', '_' or '-'")
    url = _parse_url(section.string("url"), path)
    kind_text = section.string("kind", "generic") or "generic"
    try:
        kind = FileKind(kind_text)
    except ValueError:
        raise ConfigError(f"{path}.kind: {kind_text!r} must be one of generic, deb, rpm, apk") from None
    credentials = _parse_credentials(section, path, environ)
    mutable = section.patterns("mutable")
    immutable = section.patterns("immutable")
    mutable_ttl = section.duration("mutable_ttl", MUTABLE_TTL)
    max_stale = section.duration("max_stale", MAX_STALE)
    negative_ttl = section.duration("negative_ttl", NEGATIVE_TTL)
    connect_timeout = section.duration("connect_timeout", 10.0)
    response_timeout = section.duration("response_timeout", 60.0)
    if connect_timeout <= 0 or response_timeout <= 0:
        raise ConfigError(f"{path}: connect_timeout and response_timeout must be positive")
    section.finish()
    return RemoteConfig(name, url, kind, credentials, mutable, immutable, mutable_ttl, max_stale, negative_ttl,
                        connect_timeout, response_timeout)


def _parse_url(text: str | None, path: str) -> DecodedURL:
    if text is None:
        raise ConfigError(f"{path}.url: required (e.g. 'http://deb.debian.org/debian')")
    try:
        url = DecodedURL.from_text(text)
    except Exception:
        raise ConfigError(f"{path}.url: {text!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{path}.url: {text!r} must be an http:// or https:// URL with a host")
    if url.query or url.fragment or url.user:
        raise ConfigError(f"{path}.url: {text!r} must not have a query, fragment or user")
    # The files' paths are appended below it: no trailing empty segment.
    segments = [segment for segment in url.path if segment]
    return url.replace(path=segments)


def _parse_credentials(section: _Table, path: str, environ: Mapping[str, str]) -> Credentials | None:
    username = section.string("username")
    password_file = section.string("password_file")
    password_env = section.string("password_env")
    if section.take("password") is not None:
        raise ConfigError(f"{path}.password: a literal password is not accepted; use password_file or password_env")
    if username is None:
        if password_file is not None or password_env is not None:
            raise ConfigError(f"{path}: a password needs a username")
        return None
    if (password_file is None) == (password_env is None):
        raise ConfigError(f"{path}: username needs one of password_file or password_env")
    if password_env is not None:
        if password_env not in environ:
            raise ConfigError(f"{path}.password_env: environment variable {password_env!r} is not set")
        return Credentials(username, environ[password_env])
    assert password_file is not None
    try:
        with open(password_file, encoding="utf-8") as f:
            password = next(iter(f.read().splitlines()), "")
    except OSError as e:
        raise ConfigError(f"{path}.password_file: cannot read {password_file!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}.password_file: {password_file!r} is not UTF-8") from None
    if not password:
        raise ConfigError(f"{path}.password_file: {password_file!r} has no password on its first line")
    return Credentials(username, password)
