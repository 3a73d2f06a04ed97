"""
The C{[[git]]} tables: the git hosts ocicache serves under C{/git/<name>/}.

    [[git]]
    name = "github.com"            # what clients write after /git/
    url = "https://github.com"     # where its repositories live
    stale_refs = false             # serve the last advertisement when it is down
    proof_ttl = "60s"              # how long a client's access proof is reused
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

from attrs import frozen
from hyperlink import DecodedURL

from .._ops._config import ConfigError, Credentials, parse_duration

__all__ = ["GitConfig", "GitUpstreamConfig", "parse_git"]

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


@frozen
class GitConfig:
    """Every C{[[git]]} table, in order."""

    upstreams: tuple[GitUpstreamConfig, ...] = ()

    def named(self, name: str) -> GitUpstreamConfig | None:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        return None


_KEYS = frozenset({"name", "url", "mode", "stale_refs", "max_stale", "proof_ttl", "pack_ttl", "tls_verify",
                   "connect_timeout", "response_timeout", "username", "password_env"})


def parse_git(raw: object, environ: Mapping[str, str] | None = None) -> GitConfig:
    """
    Validate the C{git} array of tables; raises L{ConfigError} naming the
    key (C{git[0].url: ...}).
    """
    if raw is None:
        return GitConfig()
    if not isinstance(raw, list):
        raise ConfigError("git: expected an array of tables ([[git]])")
    environ = os.environ if environ is None else environ
    upstreams = tuple(_parse_one(table, index, environ) for index, table in enumerate(raw))
    seen: set[str] = set()
    for index, upstream in enumerate(upstreams):
        if upstream.name in seen:
            raise ConfigError(f"git[{index}].name: {upstream.name!r} is configured twice")
        seen.add(upstream.name)
    return GitConfig(upstreams)


def _parse_one(table: object, index: int, environ: Mapping[str, str]) -> GitUpstreamConfig:
    path = f"git[{index}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: expected a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s): {', '.join(unknown)}")
    name = _typed(table, path, "name", str, None)
    if name is None:
        raise ConfigError(f"{path}.name: required (the host clients write after /git/, e.g. 'github.com')")
    if _HOST.fullmatch(name) is None:
        raise ConfigError(f"{path}.name: {name[:80]!r} is not a lower-case host name such as 'github.com'")
    url_text = _typed(table, path, "url", str, None)
    if url_text is None:
        raise ConfigError(f"{path}.url: required (e.g. 'https://github.com')")
    try:
        url = DecodedURL.from_text(url_text)
    except Exception:
        raise ConfigError(f"{path}.url: {url_text[:80]!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{path}.url: {url_text[:80]!r} must be an http:// or https:// URL with a host")
    if url.query or url.fragment or url.user:
        raise ConfigError(f"{path}.url: {url_text[:80]!r} must have no query, fragment or credentials")
    mode = _typed(table, path, "mode", str, "cache")
    if mode not in MODES:
        raise ConfigError(f"{path}.mode: {mode[:40]!r} must be one of: {', '.join(MODES)}")
    if mode == "mirror" and shutil.which("git") is None:
        raise ConfigError(f"{path}.mode: mirror needs the git program on PATH (apt-get install git)")
    username = _typed(table, path, "username", str, None)
    password_env = _typed(table, path, "password_env", str, None)
    credentials = None
    if (username is None) != (password_env is None):
        raise ConfigError(f"{path}: set username and password_env together")
    if username is not None and password_env is not None:
        if mode != "mirror":
            raise ConfigError(f"{path}.username: only a mode = 'mirror' upstream fetches with its own credentials")
        password = environ.get(password_env)
        if not password:
            raise ConfigError(f"{path}.password_env: ${password_env[:80]} is not set")
        credentials = Credentials(username, password)
    defaults = GitUpstreamConfig(name="", url=url)
    return GitUpstreamConfig(
        name=name,
        url=url,
        mode=mode,
        stale_refs=_typed(table, path, "stale_refs", bool, defaults.stale_refs),
        max_stale=_duration(table, path, "max_stale", defaults.max_stale),
        proof_ttl=_duration(table, path, "proof_ttl", defaults.proof_ttl),
        pack_ttl=_duration(table, path, "pack_ttl", defaults.pack_ttl),
        tls_verify=_typed(table, path, "tls_verify", bool, defaults.tls_verify),
        connect_timeout=_duration(table, path, "connect_timeout", defaults.connect_timeout),
        response_timeout=_duration(table, path, "response_timeout", defaults.response_timeout),
        credentials=credentials,
    )


def _typed(table: Mapping[str, Any], path: str, key: str, kind: type, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{path}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _duration(table: Mapping[str, Any], path: str, key: str, default: float) -> float:
    if key not in table:
        return default
    try:
        seconds = parse_duration(table[key])
    except (ValueError, OverflowError) as e:
        raise ConfigError(f"{path}.{key}: {e}") from None
    if seconds <= 0:
        raise ConfigError(f"{path}.{key}: must be positive")
    return seconds
