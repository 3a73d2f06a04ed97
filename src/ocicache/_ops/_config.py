"""
Configuration: one TOML file, validated at start-up into frozen objects.

A bad file must stop the daemon with one line that names the key and what
is wrong with it, so every check raises L{ConfigError} with a dotted key
path (C{upstream[2].url}) rather than letting a C{KeyError} escape.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from attrs import field, frozen
from hyperlink import DecodedURL

from .._spec._closure import Platform, host_platform
from .._spec._reference import InvalidReference, is_registry_host, parse_image_reference
from ._auth_files import StaticToken, read_htpasswd, read_jwks, read_signing_key, read_tokens_file
from ._patterns import Pattern

if TYPE_CHECKING:
    from .._files._config import FilesConfig

__all__ = [
    "AuthConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "CredentialCommand",
    "Credentials",
    "FleetConfig",
    "MetricsConfig",
    "OIDCIssuerConfig",
    "RuleConfig",
    "S3Config",
    "S3Keys",
    "STALE_FAILURES",
    "ServerConfig",
    "StalePolicy",
    "StorageConfig",
    "UpstreamConfig",
    "WarmConfig",
    "default_cache_dir",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]

T = TypeVar("T")


class ConfigError(Exception):
    """
    The configuration is invalid; C{str()} is the one line shown to the
    operator.
    """


@frozen
class Credentials:
    """
    A username and password for one upstream.  The password never appears
    in C{repr()}, so it cannot leak through a log line or a traceback.
    """

    username: str
    password: str = field(repr=False)


STALE_FAILURES = ("connect", "timeout", "5xx", "protocol", "429", "401", "403")
"""
The upstream failures a tag may be served stale for: no connection, no
answer in time, a server error, an unusable answer (a bad redirect, a body
cut short), rate limiting, and refused credentials or access.
"""

MAX_STALE_LIMIT = 30 * 86400.0
"""Tag rows are kept this long past their last revalidation (the janitor's TAG_RETENTION)."""


@frozen
class StalePolicy:
    """
    When an upstream's tags and tag lists are served stale (RFC 5861 §4,
    stale-if-error) rather than the upstream's failure passed on.
    """

    stale_on: frozenset[str] = frozenset({"connect", "timeout", "5xx", "protocol", "429"})
    """The failures that serve stale (L{STALE_FAILURES}); 401 and 403 do not by default."""
    max_stale: float = MAX_STALE_LIMIT
    """Seconds past its last revalidation after which a tag is not served stale."""
    on_404: str = "keep"
    """C{keep}: an upstream 404 for a cached tag serves it stale; C{forget}: drops it, answers 404."""


@frozen
class CredentialCommand:
    """
    A program that prints an upstream's credentials as the
    docker-credential-helpers protocol's C{get} answers
    (C{{"Username": ..., "Secret": ...}}), run again after C{ttl} seconds.
    C{argv[0]} is a path, or a name looked up on C{$PATH} when it runs.
    """

    argv: tuple[str, ...]
    ttl: float
    server_url: str
    """What the program reads on its standard input: the upstream's URL."""


@frozen
class UpstreamConfig:
    """
    One upstream registry.  C{name} is the registry host that clients ask
    for (C{?ns=docker.io}, C{/v2/docker.io/...}); C{url} is where it lives.
    """

    name: str
    url: DecodedURL
    default: bool = False
    credentials: Credentials | None = None
    tag_ttl: float | None = None
    ca_file: str | None = None
    tls_verify: bool = True
    max_downloads: int = 16
    """Upstream fetches at once from this upstream."""
    connect_timeout: float = 10.0
    """Seconds a TCP (and TLS) connection to the upstream may take."""
    response_timeout: float = 60.0
    """
    Seconds the upstream may take to answer with its headers, and may go
    without sending a body byte: past it the request fails as a timeout
    (which serves stale, by default).
    """
    include: tuple[Pattern, ...] = ()
    """Repositories that may be pulled; empty: every one."""
    exclude: tuple[Pattern, ...] = ()
    """Repositories that may not be pulled, whatever C{include} says."""
    tags: tuple[Pattern, ...] = ()
    """Tags that may be pulled by tag; empty: every one."""
    digest_only: bool = False
    """Manifests by digest only: tags and tag lists are refused."""
    credential_command: CredentialCommand | None = None
    """Where C{credentials} come from when a program gives them."""
    kind: str = "registry"
    """C{registry}: the registry itself; C{mirror}: a mirror (another ocicache) that takes C{?ns=}."""
    ns: str | None = None
    """For a mirror: the registry host sent as C{?ns=}; C{None}: this upstream's C{name}."""
    token: str | None = field(default=None, repr=False)
    """A static bearer token sent to this upstream up front (a mirror tier's client token)."""
    quota_floor: int | float = 0.1
    """
    Pulls left (an C{int}) or the fraction of the limit left (a C{float})
    below which the upstream's tags are revalidated only every
    C{quota_stretch}.
    """
    quota_stretch: float = 21600.0
    """The tag TTL while the upstream's remaining pulls are below C{quota_floor}."""
    stale: StalePolicy = StalePolicy()

    @property
    def mirror_ns(self) -> str | None:
        """
        The C{?ns=} value sent with every request to a mirror (containerd
        docs/hosts.md, "ns" query parameter), or C{None} for a registry.
        """
        if self.kind != "mirror":
            return None
        return self.ns or self.name

    @property
    def is_docker_hub(self) -> bool:
        """
        Docker Hub puts one-segment names under C{library/}.
        """
        return self.name == "docker.io"


@frozen
class ServerConfig:
    """
    C{[server]}: the registry listeners and the bounds each client
    connection is held to (L{ocicache._web._site}).
    """

    listen: tuple[str, ...] = ("tcp:5000:interface=127.0.0.1",)
    drain_timeout: float = 30.0
    log_format: str = "text"
    header_timeout: float = 10.0
    """The whole request head must arrive within this (slowloris)."""
    idle_timeout: float = 60.0
    """An idle keep-alive connection is closed after this."""
    stall_timeout: float = 60.0
    """A client that takes no response bytes for this long is cut."""
    max_connections: int | None = None
    """Client connections at once; C{None}: derived from C{RLIMIT_NOFILE}."""
    max_header_bytes: int = 16 << 10
    max_headers: int = 100
    max_request_line: int = 8 << 10
    sendfile: bool = True
    """Blob bodies on plain TCP go out with sendfile(2)."""


@frozen
class CacheConfig:
    dir: str
    tag_ttl: float = 300.0
    max_size: int | None = None
    min_free: int | float | None = None
    """Bytes (C{int}) or a fraction of the filesystem (C{float})."""
    blob_ttl: float | None = None
    janitor_interval: float = 60.0
    max_downloads: int = 32
    """Upstream fetches at once, all upstreams together."""
    download_queue: int = 256
    """Requests that may wait for a fetch; past it they get 429."""
    abandon_after: float = 10.0
    """Seconds a download may go unread before it is abandoned."""
    abandon_below: float = 0.5
    """Only a download with less than this fraction of its body in is abandoned."""
    scrub_rate: int = 16 << 20
    """Bytes per second the background scrub re-hashes; 0: no scrub."""
    manifest_ttl: float | None = 30 * 86400.0
    """Seconds an unreferenced manifest is kept unread; C{None}: forever."""
    referrers_ttl: float = 60.0
    """Seconds a referrers listing is reused before the upstream is asked again."""
    protect_recent: float = 3600.0
    """Blobs of a manifest read this recently are never evicted (a pull in progress)."""
    negative_ttl: float = 30.0
    """Seconds an upstream 404 for a tag or repository is remembered; 0: not at all."""
    negative_digest_ttl: float = 5.0
    """Seconds an upstream 404 for a digest is remembered (a push may bring it); 0: not at all."""


@frozen
class MetricsConfig:
    listen: str | None = None


@frozen
class FleetConfig:
    """
    C{[fleet]}: this node's place among ocicache nodes sharing one Redis
    (L{ocicache._fleet}).  The password and the secret never appear in
    C{repr()}.
    """

    redis_host: str
    redis_port: int
    redis_db: int
    node: str
    """This node's name in the fleet: unique per node."""
    internal_listen: str
    """The Twisted endpoint of the internal, authenticated peer endpoint."""
    peer_url: DecodedURL
    """How the other nodes reach C{internal_listen}."""
    secret: str = field(repr=False)
    """Shared by every node: the bearer token of node-to-node requests."""
    redis_password: str | None = field(default=None, repr=False)
    lock_ttl: float = 10.0
    """How long a fill lock outlives its holder; renewed while the download runs."""


@frozen
class RuleConfig:
    """
    One C{[[rule]]}: who it is for (every matcher given must hold), and
    what it allows or denies them (L{ocicache._policy}).
    """

    label: str
    """C{rule[N]}, or C{rule[N] (name)}: what log lines call it."""
    action: str = "allow"
    identity: Pattern | None = None
    """Matched against C{anonymous}, C{user:NAME}, C{token:NAME} or C{oidc:SUB}."""
    user: Pattern | None = None
    token: Pattern | None = None
    claims: tuple[tuple[str, Pattern], ...] = ()
    upstreams: tuple[str, ...] | None = None
    """Upstream names; C{None}: every upstream."""
    repositories: tuple[Pattern, ...] | None = None
    """Repository patterns; C{None}: every repository."""


@frozen
class WarmConfig:
    """
    One C{[[warm]]} table: images the daemon fetches at start and every
    C{every} seconds (C{None}: at start only), for C{platforms} only;
    C{pin} keeps their closures from eviction and expiry.
    """

    refs: tuple[str, ...]
    platforms: tuple[Platform, ...]
    every: float | None = None
    pin: bool = False


@frozen
class OIDCIssuerConfig:
    """
    One C{[[auth.oidc]]}: workload tokens (JWTs) this issuer signs, for
    this audience, are accepted.  Its keys come from C{jwks_url}, fetched
    and cached, or from C{jwks_file}, read at load.
    """

    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = field(default=None, repr=False)
    """The parsed C{jwks_file}, when there is one."""


@frozen
class AuthConfig:
    """
    C{[auth]}: how clients prove who they are.  Without the section,
    nobody has to (loopback stays zero-config).  Secrets never show in
    C{repr()}.
    """

    anonymous: bool = False
    """Whether a request without credentials is served (as anonymous)."""
    tokens: tuple[StaticToken, ...] = field(default=(), repr=False)
    users: Mapping[str, bytes] = field(factory=dict, repr=False)
    """htpasswd: user -> bcrypt hash."""
    issue_tokens: bool = False
    """The registry token flow: a Bearer challenge and ocicache's C{/token}."""
    token_realm: str | None = None
    """The realm in the challenge; C{None}: C{/token} on the host the client asked."""
    token_service: str = "ocicache"
    token_ttl: float = 300.0
    token_key: bytes | None = field(default=None, repr=False)
    """PEM of C{token_key_file}; C{None}: a key generated at start."""
    oidc: tuple[OIDCIssuerConfig, ...] = ()


@frozen
class S3Keys:
    """An S3 access key pair; the secret never appears in C{repr()}."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)


@frozen
class S3Config:
    """
    C{[storage]} with C{backend = "s3"}: where blobs live, and how the
    local disk tier and the multipart uploads behave.
    """

    endpoint: DecodedURL
    bucket: str
    keys: S3Keys | None
    """The key pair from files or the environment; C{None} with C{credential_command}."""
    region: str = "us-east-1"
    prefix: str = ""
    """Prepended to every key: empty, or ending with C{/}."""
    path_style: bool = True
    tls_verify: bool = True
    ca_file: str | None = None
    local_max_size: int = 0
    """Bytes of hot blobs kept on the local disk too; 0: none kept."""
    redirect: bool = False
    """Blob GETs get a C{307} to a presigned URL."""
    upload_part_size: int = 16 << 20
    max_part_uploads: int = 4
    """Parts being uploaded at once, all downloads together."""
    abandon_uploads_after: float = 3600.0
    credential_command: CredentialCommand | None = None
    """A program that prints the key pair (C{Username}: the access key, C{Secret}: the secret)."""


@frozen
class StorageConfig:
    """C{[storage]}: C{s3} is C{None} for the default filesystem backend."""

    backend: str = "filesystem"
    s3: S3Config | None = None


@frozen
class Config:
    server: ServerConfig
    cache: CacheConfig
    upstreams: tuple[UpstreamConfig, ...]
    metrics: MetricsConfig = MetricsConfig()
    fleet: FleetConfig | None = None
    """C{None}: a single node, as without a C{[fleet]} table."""
    rules: tuple[RuleConfig, ...] = ()
    """The C{[[rule]]} list, in order: the first that matches decides."""
    warm: tuple[WarmConfig, ...] = ()
    auth: AuthConfig | None = None
    """C{None}: no C{[auth]} section, every request is anonymous."""
    storage: StorageConfig = StorageConfig()
    files: FilesConfig | None = None
    """The C{[[files]]} remotes and C{[files_cache]}; C{None}: neither is configured."""

    @property
    def default_upstream(self) -> UpstreamConfig | None:
        for upstream in self.upstreams:
            if upstream.default:
                return upstream
        return None

    def upstream_named(self, name: str) -> UpstreamConfig | None:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        return None

    def tag_ttl_for(self, upstream: UpstreamConfig) -> float:
        if upstream.tag_ttl is not None:
            return upstream.tag_ttl
        return self.cache.tag_ttl


# The embedded default: Docker Hub as the default upstream, plus the
# well-known public registries, each under the host name clients use.
WELL_KNOWN_UPSTREAMS: tuple[tuple[str, str], ...] = (
    ("docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("quay.io", "https://quay.io"),
    ("registry.k8s.io", "https://registry.k8s.io"),
    ("gcr.io", "https://gcr.io"),
    ("public.ecr.aws", "https://public.ecr.aws"),
    ("mcr.microsoft.com", "https://mcr.microsoft.com"),
)


def default_cache_dir() -> str:
    """
    The per-user default cache directory: C{$XDG_CACHE_HOME/ocicache}, or
    C{~/.cache/ocicache}.  systemd's C{CacheDirectory=} sets
    C{$CACHE_DIRECTORY}, which wins over both.
    """
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return systemd.split(":")[0]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "ocicache")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_duration(value: object) -> float:
    """
    Parse C{"30s"}, C{"5m"}, C{"2h"} or C{"7d"} (or a bare number of
    seconds) into seconds.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '5m'")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as '5m'")
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration; use a number with s, m, h or d, such as '5m'"
        )
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is too long")
    return seconds


def parse_size(value: object) -> int:
    """
    Parse C{"150MiB"} and friends (C{KiB}, C{MiB}, C{GiB}, C{TiB}, or a bare
    number of bytes) into bytes.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as '50GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as '50GiB'")
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a size; use a number with KiB, MiB, GiB or TiB, such as '50GiB'"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


# [server] bounds on a request head: below these no real client works,
# above them one connection could hold megabytes of headers.
_MIN_HEAD_SIZE = 1 << 10
_MAX_HEAD_SIZE = 1 << 20
_MAX_HEADERS = 10_000


def _positive_duration(section: _Section, name: str, default: float) -> float:
    seconds = section.convert(name, parse_duration, default)
    if seconds <= 0:
        raise ConfigError(f"{section.key(name)}: must be positive")
    return seconds


def _head_size(section: _Section, name: str, default: int) -> int:
    size = section.convert(name, parse_size, default)
    if not _MIN_HEAD_SIZE <= size <= _MAX_HEAD_SIZE:
        raise ConfigError(f"{section.key(name)}: must be between 1KiB and 1MiB")
    return size


def _parse_min_free(value: object) -> int | float:
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1]
        try:
            percent = float(number)
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage such as '5%'") from None
        if not 0 <= percent < 100:
            raise ValueError("a percentage must be between 0% and 100%")
        return percent / 100
    return parse_size(value)


def _parse_quota_floor(value: object) -> int | float:
    """A count of pulls (C{10}) or a percentage of the limit (C{"10%"})."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a number of pulls (10) or a percentage of the limit ('10%')")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    number = value.strip()
    if not number.endswith("%"):
        raise ValueError(f"{value!r} is not a number of pulls (10) or a percentage of the limit ('10%')")
    try:
        percent = float(number[:-1])
    except ValueError:
        raise ValueError(f"{value!r} is not a percentage such as '10%'") from None
    if not 0 <= percent <= 100:
        raise ValueError("a percentage must be between 0% and 100%")
    return percent / 100


class _Section:
    """
    Reads typed keys out of one TOML table and refuses keys it does not
    know, so a typo (C{max_szie}) fails loudly instead of being ignored.
    """

    def __init__(self, table: object, path: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{path}: expected a table")
        self._table = dict(table)
        self._path = path
        self.given = frozenset(self._table)
        """Every key the table has, read or not."""

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def get(self, name: str, kind: type[T] | tuple[type, ...], default: Any = None) -> Any:
        if name not in self._table:
            return default
        value = self._table.pop(name)
        if isinstance(value, bool) and kind is not bool and kind != (bool,):
            raise ConfigError(f"{self.key(name)}: expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise ConfigError(
                f"{self.key(name)}: expected {_kind_name(kind)}, got {type(value).__name__}"
            )
        return value

    def convert(self, name: str, parse: Callable[[object], T], default: T) -> T:
        if name not in self._table:
            return default
        value = self._table.pop(name)
        try:
            return parse(value)
        except (ValueError, OverflowError) as e:
            raise ConfigError(f"{self.key(name)}: {e}") from None

    def finish(self) -> None:
        if self._table:
            unknown = ", ".join(sorted(self._table))
            raise ConfigError(f"{self._path or 'top level'}: unknown key(s): {unknown}")


_KIND_NAMES: dict[type, str] = {
    str: "a string", bool: "true or false", int: "an integer", list: "a list", dict: "a table",
}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def _parse_upstream(table: object, index: int, environ: Mapping[str, str]) -> UpstreamConfig:
    path = f"upstream[{index}]"
    section = _Section(table, path)
    name = section.get("name", str)
    if name is None:
        raise ConfigError(f"{path}.name: required (the registry host clients ask for, e.g. 'docker.io')")
    if not is_registry_host(name):
        raise ConfigError(f"{path}.name: {name!r} is not a registry host name such as 'docker.io'")
    url_text = section.get("url", str)
    if url_text is None:
        raise ConfigError(f"{path}.url: required (e.g. 'https://registry-1.docker.io')")
    try:
        url = DecodedURL.from_text(url_text)
    except Exception:
        raise ConfigError(f"{path}.url: {url_text!r} is not a URL") from None
    if any(url.userinfo):
        # Not echoed: it may hold a password.
        raise ConfigError(
            f"{path}.url: must not contain credentials; use username and password_file or password_env"
        )
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{path}.url: {url_text!r} must be an http:// or https:// URL with a host")
    if url.query or url.fragment:
        raise ConfigError(f"{path}.url: {url_text!r} must not have a query or fragment")
    url = url.replace(path=tuple(segment for segment in url.path if segment))
    default = section.get("default", bool, False)
    username = section.get("username", str)
    password_file = section.get("password_file", str)
    password_env = section.get("password_env", str)
    if "password" in section._table:
        raise ConfigError(
            f"{path}.password: a literal password is not accepted; use password_file or password_env"
        )
    credentials = None
    credential_command = _parse_credential_command(section, path, url)
    if credential_command is not None and (username, password_file, password_env) != (None, None, None):
        raise ConfigError(
            f"{path}: credential_helper or credential_command gives the username too;"
            " drop username, password_file and password_env"
        )
    if password_file is not None and password_env is not None:
        raise ConfigError(f"{path}: set password_file or password_env, not both")
    if username is not None:
        if password_file is not None:
            try:
                with open(password_file, encoding="utf-8") as f:
                    # The first line is the password (etc/ocicache.toml).
                    password = next(iter(f.read().splitlines()), "")
            except OSError as e:
                raise ConfigError(
                    f"{path}.password_file: cannot read {password_file!r}: {e.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(f"{path}.password_file: {password_file!r} is not UTF-8") from None
            if not password:
                raise ConfigError(f"{path}.password_file: {password_file!r} has no password on its first line")
        elif password_env is not None:
            if password_env not in environ:
                raise ConfigError(
                    f"{path}.password_env: environment variable {password_env!r} is not set"
                )
            password = environ[password_env]
        else:
            raise ConfigError(f"{path}: username needs password_file or password_env")
        credentials = Credentials(username, password)
    elif password_file is not None or password_env is not None:
        raise ConfigError(f"{path}: a password needs a username")
    tag_ttl = section.convert("tag_ttl", parse_duration, None)
    ca_file = section.get("ca_file", str)
    if ca_file is not None and not os.path.isfile(ca_file):
        raise ConfigError(f"{path}.ca_file: {ca_file!r} is not a readable file")
    tls_verify = section.get("tls_verify", bool, True)
    max_downloads = section.get("max_downloads", int, _UPSTREAM_DEFAULTS.max_downloads)
    if max_downloads < 1:
        raise ConfigError(f"{path}.max_downloads: must be at least 1")
    connect_timeout = _positive_duration(section, "connect_timeout", _UPSTREAM_DEFAULTS.connect_timeout)
    response_timeout = _positive_duration(section, "response_timeout", _UPSTREAM_DEFAULTS.response_timeout)
    kind, ns = _tier(section, path)
    token = _static_token(section, path, environ)
    if token is not None and (credentials is not None or credential_command is not None):
        raise ConfigError(f"{path}: set token_file or token_env, or credentials, not both")
    include, exclude, tags, digest_only = _parse_upstream_policy(section, path)
    quota_floor = section.convert("quota_floor", _parse_quota_floor, _UPSTREAM_DEFAULTS.quota_floor)
    quota_stretch = _positive_duration(section, "quota_stretch", _UPSTREAM_DEFAULTS.quota_stretch)
    stale = _parse_stale_policy(section)
    section.finish()
    return UpstreamConfig(
        name=name.lower(),
        url=url,
        default=default,
        credentials=credentials,
        tag_ttl=tag_ttl,
        ca_file=ca_file,
        tls_verify=tls_verify,
        max_downloads=max_downloads,
        connect_timeout=connect_timeout,
        response_timeout=response_timeout,
        include=include,
        exclude=exclude,
        tags=tags,
        digest_only=digest_only,
        credential_command=credential_command,
        kind=kind,
        ns=ns,
        token=token,
        quota_floor=quota_floor,
        quota_stretch=quota_stretch,
        stale=stale,
    )


def _tier(section: _Section, path: str) -> tuple[str, str | None]:
    """
    C{kind} and C{ns}: an upstream that is itself a mirror (a regional
    ocicache) is told which registry each request is for with C{?ns=}.
    """
    kind = section.get("kind", str, "registry")
    if kind not in ("registry", "mirror"):
        raise ConfigError(f"{path}.kind: {kind!r} must be 'registry' or 'mirror'")
    ns = section.get("ns", str, None)
    if ns is not None:
        if kind != "mirror":
            raise ConfigError(f"{path}.ns: only a kind = 'mirror' upstream takes ns")
        if not is_registry_host(ns):
            raise ConfigError(f"{path}.ns: {ns!r} is not a registry host name such as 'docker.io'")
        ns = ns.lower()
    return kind, ns


def _static_token(section: _Section, path: str, environ: Mapping[str, str]) -> str | None:
    """
    C{token_file} or C{token_env}: a bearer token for the upstream, as a
    regional ocicache's C{[auth] tokens_file} expects from an edge.
    """
    token = _secret(section, "token", environ, required=False)
    # RFC 6750 §2.1: b64token characters only, so it cannot break the header.
    if token is not None and not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token):
        raise ConfigError(f"{path}.token: the token must be one line of RFC 6750 token characters")
    return token


# -- who may pull what (L{ocicache._policy})

# The characters of the reference grammar's names and tags, plus the
# glob's own: a pattern holding anything else could never match.
_REPOSITORY_PATTERN = re.compile(r"^[a-z0-9._/*?-]+$")
_TAG_PATTERN = re.compile(r"^[A-Za-z0-9._*?-]+$")


def _pattern_list(section: _Section, name: str, alphabet: re.Pattern[str] | None) -> tuple[Pattern, ...] | None:
    """
    A non-empty list of glob patterns, each compiled; C{None} when unset.
    """
    values = section.get(name, list, None)
    if values is None:
        return None
    if not values:
        raise ConfigError(f"{section.key(name)}: must not be empty (leave it out to match everything)")
    patterns = []
    for index, value in enumerate(values):
        key = f"{section.key(name)}[{index}]"
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string")
        if alphabet is not None and not alphabet.match(value):
            raise ConfigError(f"{key}: {value[:80]!r} can never match: names are lower-case letters,"
                              " digits, '.', '_', '-' and '/', tags also upper-case letters")
        patterns.append(_pattern(key, value))
    return tuple(patterns)


def _pattern(key: str, value: str) -> Pattern:
    try:
        return Pattern(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _parse_upstream_policy(
    section: _Section, path: str
) -> tuple[tuple[Pattern, ...], tuple[Pattern, ...], tuple[Pattern, ...], bool]:
    """
    An upstream's C{include}, C{exclude}, C{tags} and C{digest_only}.
    """
    include = _pattern_list(section, "include", _REPOSITORY_PATTERN) or ()
    exclude = _pattern_list(section, "exclude", _REPOSITORY_PATTERN) or ()
    tags = _pattern_list(section, "tags", _TAG_PATTERN) or ()
    digest_only = section.get("digest_only", bool, False)
    if digest_only and tags:
        raise ConfigError(f"{path}.tags: digest_only refuses every tag; set one or the other")
    return include, exclude, tags, digest_only


_HELPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DEFAULT_CREDENTIAL_TTL = 15 * 60.0


def _parse_credential_command(section: _Section, path: str, url: DecodedURL) -> CredentialCommand | None:
    """
    C{credential_helper} (C{docker-credential-<name> get}) or
    C{credential_command}, with C{credential_ttl}.
    """
    helper = section.get("credential_helper", str, None)
    command = section.get("credential_command", list, None)
    ttl = _positive_duration(section, "credential_ttl", _DEFAULT_CREDENTIAL_TTL)
    if helper is not None and command is not None:
        raise ConfigError(f"{path}: set credential_helper or credential_command, not both")
    if helper is not None:
        if not _HELPER_NAME.match(helper):
            raise ConfigError(f"{path}.credential_helper: {helper[:80]!r} is not a helper name such as 'ecr-login'"
                              " (ocicache runs docker-credential-<name>)")
        argv: tuple[str, ...] = (f"docker-credential-{helper}", "get")
    elif command is not None:
        if not command or not all(isinstance(arg, str) and arg for arg in command):
            raise ConfigError(f"{path}.credential_command: expected a non-empty list of non-empty strings")
        if "/" in command[0] and not os.path.isabs(command[0]):
            raise ConfigError(f"{path}.credential_command: {command[0][:80]!r} must be an absolute path"
                              " or a name on $PATH")
        argv = tuple(command)
    else:
        if "credential_ttl" in section.given:
            raise ConfigError(f"{path}.credential_ttl: needs credential_helper or credential_command")
        return None
    server_url = url.replace(path=()).to_uri().to_text()
    return CredentialCommand(argv=argv, ttl=ttl, server_url=server_url)


_RULE_ACTIONS = ("allow", "deny")
_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _parse_rule(table: object, index: int, upstream_names: frozenset[str]) -> RuleConfig:
    """
    One C{[[rule]]}; see README "Who may pull what".
    """
    path = f"rule[{index}]"
    section = _Section(table, path)
    name = section.get("name", str, None)
    if name is not None and not (name and name.isprintable() and len(name) <= 64):
        raise ConfigError(f"{path}.name: one line of at most 64 characters, for log lines")
    label = f"{path} ({name})" if name else path
    action = section.get("action", str, "allow")
    if action not in _RULE_ACTIONS:
        raise ConfigError(f"{path}.action: {action[:40]!r} must be 'allow' or 'deny'")
    matchers: dict[str, Pattern | None] = {}
    for key in ("identity", "user", "token"):
        value = section.get(key, str, None)
        matchers[key] = None if value is None else _pattern(section.key(key), value)
    claims: list[tuple[str, Pattern]] = []
    raw_claims = section.get("claims", dict, None)
    if raw_claims is not None:
        if not raw_claims:
            raise ConfigError(f"{path}.claims: must not be empty")
        for claim, value in sorted(raw_claims.items()):
            if not _CLAIM_NAME.match(claim):
                raise ConfigError(f"{path}.claims: {claim[:40]!r} is not a claim name")
            if not isinstance(value, str):
                raise ConfigError(f"{path}.claims.{claim}: expected a string pattern")
            claims.append((claim, _pattern(f"{path}.claims.{claim}", value)))
    if all(matcher is None for matcher in matchers.values()) and not claims:
        raise ConfigError(f"{path}: say who it is for: identity, user, token or claims"
                          " (identity = \"**\" for everyone)")
    upstreams = section.get("upstreams", list, None)
    if upstreams is not None:
        if not upstreams:
            raise ConfigError(f"{path}.upstreams: must not be empty (leave it out for every upstream)")
        for position, upstream in enumerate(upstreams):
            if not isinstance(upstream, str) or upstream.lower() not in upstream_names:
                raise ConfigError(f"{path}.upstreams[{position}]: {str(upstream)[:80]!r} is not a configured upstream")
        upstreams = tuple(upstream.lower() for upstream in upstreams)
    repositories = _pattern_list(section, "repositories", _REPOSITORY_PATTERN)
    section.finish()
    return RuleConfig(
        label=label, action=action, identity=matchers["identity"], user=matchers["user"],
        token=matchers["token"], claims=tuple(claims), upstreams=upstreams, repositories=repositories,
    )


def _parse_rules(raw: object, upstreams: tuple[UpstreamConfig, ...]) -> tuple[RuleConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("rule: expected an array of tables ([[rule]])")
    names = frozenset(upstream.name for upstream in upstreams)
    return tuple(_parse_rule(table, index, names) for index, table in enumerate(raw))


def _parse_stale_policy(section: _Section) -> StalePolicy:
    """An upstream's C{stale_on}, C{max_stale} and C{on_404}."""
    defaults = StalePolicy()
    stale_on = section.get("stale_on", list, None)
    if stale_on is None:
        failures = defaults.stale_on
    else:
        for value in stale_on:
            if value not in STALE_FAILURES:
                raise ConfigError(f"{section.key('stale_on')}: {value!r} is not one of {', '.join(STALE_FAILURES)}")
        failures = frozenset(stale_on)
    max_stale = section.convert("max_stale", parse_duration, defaults.max_stale)
    if max_stale > MAX_STALE_LIMIT:
        raise ConfigError(f"{section.key('max_stale')}: must be at most 30d (tag rows are kept 30 days)")
    on_404 = section.get("on_404", str, defaults.on_404)
    if on_404 not in ("keep", "forget"):
        raise ConfigError(f"{section.key('on_404')}: {on_404!r} must be 'keep' or 'forget'")
    return StalePolicy(stale_on=failures, max_stale=max_stale, on_404=on_404)


_CACHE_DEFAULTS = CacheConfig(dir="")


def _manifest_ttl(section: _Section) -> float | None:
    value = section.get("manifest_ttl", (str, int, float), None)
    if value is None:
        return _CACHE_DEFAULTS.manifest_ttl
    if value == "never":
        return None
    try:
        seconds = parse_duration(value)
    except (ValueError, OverflowError) as e:
        raise ConfigError(f"cache.manifest_ttl: {e}") from None
    if seconds <= 0:
        raise ConfigError("cache.manifest_ttl: must be positive, or \"never\"")
    return seconds
_MIN_PART = 5 << 20
"""S3's smallest part but the last (UploadPart)."""

_MAX_PART = 5 << 30
"""S3's largest part."""

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
"""S3's bucket naming rules (3 to 63 lowercase letters, digits, dots, hyphens)."""


def _parse_storage(table: object, environ: Mapping[str, str]) -> StorageConfig:
    """
    C{[storage]}: the filesystem backend (the default; no other keys), or
    C{backend = "s3"} with its endpoint, bucket and credentials.
    """
    section = _Section(table, "storage")
    backend = section.get("backend", str, "filesystem")
    if backend == "filesystem":
        section.finish()
        return StorageConfig()
    if backend != "s3":
        raise ConfigError(f"storage.backend: {backend!r} must be 'filesystem' or 's3'")
    endpoint_text = section.get("endpoint", str)
    if endpoint_text is None:
        raise ConfigError("storage.endpoint: required for backend = 's3' (e.g. 'https://s3.example.com')")
    try:
        endpoint = DecodedURL.from_text(endpoint_text)
    except Exception:
        raise ConfigError(f"storage.endpoint: {endpoint_text!r} is not a URL") from None
    if any(endpoint.userinfo):
        raise ConfigError("storage.endpoint: must not contain credentials; use access_key_file or access_key_env")
    if endpoint.scheme not in ("http", "https") or not endpoint.host or endpoint.query or endpoint.fragment:
        raise ConfigError(f"storage.endpoint: {endpoint_text!r} must be an http:// or https:// URL with a host")
    endpoint = endpoint.replace(path=tuple(segment for segment in endpoint.path if segment))
    bucket = section.get("bucket", str)
    if bucket is None:
        raise ConfigError("storage.bucket: required for backend = 's3'")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ConfigError(f"storage.bucket: {bucket!r} is not an S3 bucket name")
    region = section.get("region", str, "us-east-1")
    if not re.fullmatch(r"[a-z0-9-]{1,64}", region):
        raise ConfigError(f"storage.region: {region!r} is not a region name such as 'us-east-1'")
    prefix = section.get("prefix", str, "").strip("/")
    if any(not part or part in (".", "..") for part in prefix.split("/")) and prefix:
        raise ConfigError("storage.prefix: must be key segments separated by '/', such as 'ocicache/eu'")
    credential_command = _parse_credential_command(section, "storage", endpoint)
    keys = _s3_keys(section, environ, required=credential_command is None)
    if keys is not None and credential_command is not None:
        raise ConfigError("storage: set the key files or variables, or credential_helper or credential_command,"
                          " not both")
    path_style = section.get("path_style", bool, True)
    tls_verify = section.get("tls_verify", bool, True)
    ca_file = section.get("ca_file", str)
    if ca_file is not None and not os.path.isfile(ca_file):
        raise ConfigError(f"storage.ca_file: {ca_file!r} is not a readable file")
    defaults = S3Config(endpoint, "", None)
    local_max_size = section.convert("local_max_size", parse_size, 0)
    if 0 < local_max_size < 1 << 20:
        raise ConfigError("storage.local_max_size: must be 0 (no local tier) or at least 1MiB")
    redirect = section.get("redirect", bool, False)
    part_size = section.convert("upload_part_size", parse_size, defaults.upload_part_size)
    if not _MIN_PART <= part_size <= _MAX_PART:
        raise ConfigError("storage.upload_part_size: must be between 5MiB and 5GiB (S3's part limits)")
    max_part_uploads = section.get("max_part_uploads", int, defaults.max_part_uploads)
    if not 1 <= max_part_uploads <= 64:
        raise ConfigError("storage.max_part_uploads: must be between 1 and 64")
    abandon = _positive_duration(section, "abandon_uploads_after", defaults.abandon_uploads_after)
    section.finish()
    return StorageConfig("s3", S3Config(
        endpoint=endpoint, bucket=bucket, keys=keys, region=region, prefix=f"{prefix}/" if prefix else "",
        path_style=path_style, tls_verify=tls_verify, ca_file=ca_file, local_max_size=local_max_size,
        redirect=redirect, upload_part_size=part_size, max_part_uploads=max_part_uploads,
        abandon_uploads_after=abandon, credential_command=credential_command,
    ))


def _s3_keys(section: _Section, environ: Mapping[str, str], required: bool = True) -> S3Keys | None:
    """
    The access key pair, each read as any secret is (L{_secret}), and
    both the same way: two files, or two environment variables.  C{None}
    when neither is given and a credential program is.
    """
    names = ("access_key", "secret_key")
    ways = {way for name in names for way in ("file", "env") if f"{name}_{way}" in section._table}
    if len(ways) > 1:
        raise ConfigError("storage: set access_key_file and secret_key_file, or the _env pair, not both")
    if not ways and not any(name in section._table for name in names):
        if required:
            raise ConfigError("storage: backend = 's3' needs access_key_file and secret_key_file,"
                              " access_key_env and secret_key_env, or credential_helper or credential_command")
        return None
    return S3Keys(*(_secret(section, name, environ, required=True) for name in names))


_UPSTREAM_DEFAULTS = UpstreamConfig(name="", url=DecodedURL.from_text("http://defaults"))
_AUTH_DEFAULTS = AuthConfig()
# ocicache's own tokens live minutes: long enough for one pull, short
# enough that a leaked one soon stops working.
_MAX_TOKEN_TTL = 86400.0


def _read_file(section: _Section, name: str, read: Callable[[str], T]) -> T | None:
    path = section.get(name, str, None)
    if path is None:
        return None
    try:
        return read(path)
    except ValueError as e:
        raise ConfigError(f"{section.key(name)}: {e}") from None


def _http_url(section: _Section, name: str) -> str | None:
    text: str | None = section.get(name, str, None)
    if text is None:
        return None
    try:
        url = DecodedURL.from_text(text)
    except Exception:
        raise ConfigError(f"{section.key(name)}: {text!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host or any(url.userinfo):
        raise ConfigError(f"{section.key(name)}: {text!r} must be an http:// or https:// URL with a host"
                          " and no credentials")
    return text


def _parse_oidc(table: object, index: int) -> OIDCIssuerConfig:
    section = _Section(table, f"auth.oidc[{index}]")
    issuer = section.get("issuer", str, None)
    if not issuer:
        raise ConfigError(f"{section.key('issuer')}: required (the tokens' iss, e.g."
                          " 'https://token.actions.githubusercontent.com')")
    audience = section.get("audience", str, None)
    if not audience:
        raise ConfigError(f"{section.key('audience')}: required (the aud the tokens are issued for)")
    jwks_url = _http_url(section, "jwks_url")
    jwks = _read_file(section, "jwks_file", read_jwks)
    if (jwks_url is None) == (jwks is None):
        raise ConfigError(f"{section.key('jwks_url')}: set jwks_url or jwks_file, one of them")
    section.finish()
    return OIDCIssuerConfig(issuer=issuer, audience=audience, jwks_url=jwks_url, jwks=jwks)


def _parse_auth(table: object) -> AuthConfig:
    section = _Section(table, "auth")
    anonymous = section.get("anonymous", bool, _AUTH_DEFAULTS.anonymous)
    tokens = _read_file(section, "tokens_file", read_tokens_file) or ()
    users = _read_file(section, "htpasswd_file", read_htpasswd) or {}
    issue_tokens = section.get("issue_tokens", bool, _AUTH_DEFAULTS.issue_tokens)
    token_realm = _http_url(section, "token_realm")
    token_service = section.get("token_service", str, _AUTH_DEFAULTS.token_service)
    if not token_service or not token_service.isprintable():
        raise ConfigError("auth.token_service: must be a non-empty printable string")
    token_ttl = _positive_duration(section, "token_ttl", _AUTH_DEFAULTS.token_ttl)
    if token_ttl > _MAX_TOKEN_TTL:
        raise ConfigError("auth.token_ttl: must be at most 1d")
    token_key = _read_file(section, "token_key_file", read_signing_key)
    raw_oidc = section.get("oidc", list, [])
    oidc = tuple(_parse_oidc(entry, index) for index, entry in enumerate(raw_oidc))
    section.finish()
    issuers = [entry.issuer for entry in oidc]
    for index, issuer in enumerate(issuers):
        if issuer in issuers[:index]:
            raise ConfigError(f"auth.oidc[{index}].issuer: {issuer!r} is configured twice")
        if issue_tokens and issuer == token_service:
            raise ConfigError(f"auth.oidc[{index}].issuer: {issuer!r} is ocicache's own token_service")
    if not (tokens or users or oidc):
        raise ConfigError("auth: set tokens_file, htpasswd_file or [[auth.oidc]] (or remove [auth])")
    if (token_realm is not None or token_key is not None) and not issue_tokens:
        raise ConfigError("auth.issue_tokens: token_realm and token_key_file need issue_tokens = true")
    return AuthConfig(
        anonymous=anonymous, tokens=tokens, users=users, issue_tokens=issue_tokens,
        token_realm=token_realm, token_service=token_service, token_ttl=token_ttl,
        token_key=token_key, oidc=oidc,
    )


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _parse_fleet(table: object, environ: Mapping[str, str]) -> FleetConfig | None:
    """
    C{[fleet]}; absent, the node runs alone and nothing changes.
    """
    if table is None:
        return None
    section = _Section(table, "fleet")
    redis_text = section.get("redis", str, None)
    if redis_text is None:
        raise ConfigError("fleet.redis: required (e.g. 'redis://10.0.0.2:6379/0')")
    try:
        url = DecodedURL.from_text(redis_text)
        port = url.port
    except Exception:
        raise ConfigError(f"fleet.redis: {redis_text!r} is not a URL") from None
    if any(url.userinfo):
        # Not echoed: it may hold a password.
        raise ConfigError("fleet.redis: must not contain credentials; use redis_password_file or redis_password_env")
    if url.scheme != "redis" or not url.host or url.query or url.fragment:
        raise ConfigError(f"fleet.redis: {redis_text!r} must be redis://host[:port][/db]")
    segments = [segment for segment in url.path if segment]
    if len(segments) > 1 or (segments and not segments[0].isdigit()):
        raise ConfigError(f"fleet.redis: {redis_text!r}: the path must be a database number, such as /0")
    password = _secret(section, "redis_password", environ, required=False)
    node = section.get("node", str, None) or socket.gethostname().split(".")[0]
    if not _NODE_NAME.fullmatch(node):
        raise ConfigError(f"fleet.node: {node!r} must be letters, digits, '.', '_' or '-' (at most 63)")
    internal_listen = section.get("internal_listen", str, None)
    if not internal_listen:
        raise ConfigError("fleet.internal_listen: required (an endpoint such as 'tcp:5001:interface=10.0.0.5')")
    peer_text = section.get("peer_url", str, None)
    if peer_text is None:
        raise ConfigError("fleet.peer_url: required (how the other nodes reach internal_listen, e.g."
                          " 'http://10.0.0.5:5001')")
    try:
        peer_url = DecodedURL.from_text(peer_text)
    except Exception:
        raise ConfigError(f"fleet.peer_url: {peer_text!r} is not a URL") from None
    if peer_url.scheme not in ("http", "https") or not peer_url.host or any(peer_url.userinfo) \
            or peer_url.query or peer_url.fragment:
        raise ConfigError(f"fleet.peer_url: {peer_text!r} must be an http:// or https:// URL with a host")
    secret = _secret(section, "secret", environ, required=True)
    if len(secret) < 16:
        raise ConfigError("fleet.secret_file: the secret must be at least 16 characters")
    lock_ttl = _positive_duration(section, "lock_ttl", 10.0)
    if lock_ttl < 1:
        raise ConfigError("fleet.lock_ttl: must be at least 1s")
    section.finish()
    return FleetConfig(
        redis_host=str(url.host), redis_port=port or 6379, redis_db=int(segments[0]) if segments else 0,
        node=node, internal_listen=internal_listen, peer_url=peer_url.replace(path=()), secret=secret,
        redis_password=password, lock_ttl=lock_ttl,
    )


@overload
def _secret(section: _Section, name: str, environ: Mapping[str, str], required: Literal[True]) -> str: ...
@overload
def _secret(section: _Section, name: str, environ: Mapping[str, str], required: bool) -> str | None: ...
def _secret(section: _Section, name: str, environ: Mapping[str, str], required: bool) -> str | None:
    """
    C{<name>_file} (its first line) or C{<name>_env}; never a literal
    value in the file, which would end up in backups and bug reports.
    """
    if name in section._table:
        raise ConfigError(f"{section.key(name)}: a literal secret is not accepted; use {name}_file or {name}_env")
    path = section.get(f"{name}_file", str, None)
    env = section.get(f"{name}_env", str, None)
    if path is not None and env is not None:
        raise ConfigError(f"{section.key(name)}_file: set {name}_file or {name}_env, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                value = next(iter(f.read().splitlines()), "").strip()
        except OSError as e:
            raise ConfigError(f"{section.key(name)}_file: cannot read {path!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{section.key(name)}_file: {path!r} is not UTF-8") from None
        if not value:
            raise ConfigError(f"{section.key(name)}_file: {path!r} is empty")
        return value
    if env is not None:
        if env not in environ or not environ[env].strip():
            raise ConfigError(f"{section.key(name)}_env: environment variable {env!r} is not set")
        return environ[env].strip()
    if required:
        raise ConfigError(f"{section.key(name)}_file: required (or {name}_env)")
    return None


def parse_config(data: Mapping[str, object], environ: Mapping[str, str] | None = None) -> Config:
    """
    Validate a parsed TOML document into a L{Config}.  Missing sections
    take the embedded defaults; with no C{[[upstream]]} at all, the
    well-known public registries are configured, Docker Hub the default.
    """
    if environ is None:
        environ = os.environ
    top = _Section(data, "")

    server_section = _Section(top.get("server", dict, {}), "server")
    listen = server_section.get("listen", list, None)
    if listen is None:
        listen_tuple = ServerConfig().listen
    else:
        if not listen or not all(isinstance(item, str) and item for item in listen):
            raise ConfigError("server.listen: expected a non-empty list of endpoint strings")
        listen_tuple = tuple(listen)
    drain_timeout = server_section.convert("drain_timeout", parse_duration, 30.0)
    log_format = server_section.get("log_format", str, "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"server.log_format: {log_format!r} must be 'text' or 'json'")
    defaults = ServerConfig()
    header_timeout = _positive_duration(server_section, "header_timeout", defaults.header_timeout)
    idle_timeout = _positive_duration(server_section, "idle_timeout", defaults.idle_timeout)
    stall_timeout = _positive_duration(server_section, "stall_timeout", defaults.stall_timeout)
    max_connections = server_section.get("max_connections", int, None)
    if max_connections is not None and max_connections < 1:
        raise ConfigError("server.max_connections: must be at least 1 (unset: derived from the descriptor limit)")
    max_headers = server_section.get("max_headers", int, defaults.max_headers)
    if not 1 <= max_headers <= _MAX_HEADERS:
        raise ConfigError(f"server.max_headers: must be between 1 and {_MAX_HEADERS}")
    max_header_bytes = _head_size(server_section, "max_header_bytes", defaults.max_header_bytes)
    max_request_line = _head_size(server_section, "max_request_line", defaults.max_request_line)
    sendfile = server_section.get("sendfile", bool, defaults.sendfile)
    server_section.finish()
    server = ServerConfig(
        listen_tuple, drain_timeout, log_format,
        header_timeout=header_timeout, idle_timeout=idle_timeout, stall_timeout=stall_timeout,
        max_connections=max_connections, max_header_bytes=max_header_bytes, max_headers=max_headers,
        max_request_line=max_request_line, sendfile=sendfile,
    )

    cache_section = _Section(top.get("cache", dict, {}), "cache")
    cache = CacheConfig(
        dir=cache_section.get("dir", str, None) or default_cache_dir(),
        tag_ttl=cache_section.convert("tag_ttl", parse_duration, 300.0),
        max_size=cache_section.convert("max_size", parse_size, None),
        min_free=cache_section.convert("min_free", _parse_min_free, None),
        blob_ttl=cache_section.convert("blob_ttl", parse_duration, None),
        janitor_interval=cache_section.convert("janitor_interval", parse_duration, 60.0),
        max_downloads=cache_section.get("max_downloads", int, _CACHE_DEFAULTS.max_downloads),
        download_queue=cache_section.get("download_queue", int, _CACHE_DEFAULTS.download_queue),
        abandon_after=_positive_duration(cache_section, "abandon_after", _CACHE_DEFAULTS.abandon_after),
        abandon_below=float(cache_section.get("abandon_below", (int, float), _CACHE_DEFAULTS.abandon_below)),
        scrub_rate=cache_section.convert("scrub_rate", parse_size, _CACHE_DEFAULTS.scrub_rate),
        manifest_ttl=_manifest_ttl(cache_section),
        referrers_ttl=cache_section.convert("referrers_ttl", parse_duration, _CACHE_DEFAULTS.referrers_ttl),
        protect_recent=cache_section.convert("protect_recent", parse_duration, _CACHE_DEFAULTS.protect_recent),
        negative_ttl=cache_section.convert("negative_ttl", parse_duration, _CACHE_DEFAULTS.negative_ttl),
        negative_digest_ttl=cache_section.convert(
            "negative_digest_ttl", parse_duration, _CACHE_DEFAULTS.negative_digest_ttl),
    )
    if cache.max_downloads < 1:
        raise ConfigError("cache.max_downloads: must be at least 1")
    if cache.download_queue < 0:
        raise ConfigError("cache.download_queue: must be 0 or more")
    if not 0.0 <= cache.abandon_below <= 1.0:
        raise ConfigError("cache.abandon_below: must be a fraction from 0 to 1")
    if cache.max_size is not None and cache.max_size < 1 << 20:
        raise ConfigError("cache.max_size: must be at least 1MiB")
    if cache.janitor_interval <= 0:
        raise ConfigError("cache.janitor_interval: must be positive")
    cache_section.finish()

    metrics_section = _Section(top.get("metrics", dict, {}), "metrics")
    metrics = MetricsConfig(listen=metrics_section.get("listen", str, None))
    metrics_section.finish()

    fleet = _parse_fleet(top.get("fleet", dict, None), environ)
    raw_auth = top.get("auth", dict, None)
    auth = _parse_auth(raw_auth) if raw_auth is not None else None
    storage = _parse_storage(top.get("storage", dict, {}), environ)

    raw_upstreams = top.get("upstream", list, None)
    raw_rules = top.get("rule", list, None)
    raw_warm = top.get("warm", list, [])
    files = _parse_files(top.get("files", list, None), top.get("files_cache", dict, None), environ)
    top.finish()
    if raw_upstreams is None:
        upstreams = tuple(
            UpstreamConfig(name=name, url=DecodedURL.from_text(url), default=name == "docker.io")
            for name, url in WELL_KNOWN_UPSTREAMS
        )
    else:
        upstreams = tuple(
            _parse_upstream(table, index, environ) for index, table in enumerate(raw_upstreams)
        )
    if not upstreams:
        raise ConfigError("upstream: at least one [[upstream]] is required")
    seen: set[str] = set()
    for index, upstream in enumerate(upstreams):
        if upstream.name in seen:
            raise ConfigError(f"upstream[{index}].name: {upstream.name!r} is configured twice")
        seen.add(upstream.name)
    if sum(upstream.default for upstream in upstreams) > 1:
        raise ConfigError("upstream: only one upstream may set default = true")
    rules = _parse_rules(raw_rules, upstreams)
    warm = _parse_warm_tables(raw_warm, upstreams)
    return Config(server=server, cache=cache,
                  upstreams=upstreams, metrics=metrics, rules=rules, warm=warm, auth=auth, storage=storage, fleet=fleet,
                  files=files)


def _parse_files(tables: list[object] | None, cache: dict[str, object] | None,
                 environ: Mapping[str, str]) -> FilesConfig | None:
    """C{[[files]]} and C{[files_cache]}: their own module (L{ocicache._files._config}) reads them."""
    if tables is None and cache is None:
        return None
    from .._files._config import parse_files

    return parse_files(tables if tables is not None else [], cache if cache is not None else {}, environ)


# -- [[warm]]: images fetched, and perhaps pinned, by the daemon itself


def _parse_warm_tables(tables: list[object], upstreams: tuple[UpstreamConfig, ...]) -> tuple[WarmConfig, ...]:
    return tuple(_parse_warm(table, index, upstreams) for index, table in enumerate(tables))


def _parse_warm(table: object, index: int, upstreams: tuple[UpstreamConfig, ...]) -> WarmConfig:
    path = f"warm[{index}]"
    section = _Section(table, path)
    refs = section.get("refs", list, None)
    if not refs:
        raise ConfigError(f"{path}.refs: required, a non-empty list of images such as 'docker.io/library/alpine:3.20'")
    names = {upstream.name for upstream in upstreams}
    has_default = any(upstream.default for upstream in upstreams)
    for number, ref in enumerate(refs):
        key = f"{path}.refs[{number}]"
        if not isinstance(ref, str):
            raise ConfigError(f"{key}: expected a string")
        try:
            parsed = parse_image_reference(ref)
        except InvalidReference as e:
            raise ConfigError(f"{key}: {ref!r} is not an image reference ({e.message})") from None
        if parsed.registry is None and not has_default:
            raise ConfigError(f"{key}: {ref!r} names no registry and no upstream is the default")
        if parsed.registry is not None and parsed.registry not in names:
            raise ConfigError(f"{key}: no [[upstream]] is named {parsed.registry!r}")
    raw_platforms = section.get("platforms", list, None)
    if raw_platforms is None:
        platforms: tuple[Platform, ...] = (host_platform(),)
    else:
        if not raw_platforms:
            raise ConfigError(f"{path}.platforms: expected a non-empty list such as ['linux/amd64']")
        parsed_platforms = []
        for number, text in enumerate(raw_platforms):
            if not isinstance(text, str):
                raise ConfigError(f"{path}.platforms[{number}]: expected a string")
            try:
                parsed_platforms.append(Platform.parse(text))
            except ValueError as e:
                raise ConfigError(f"{path}.platforms[{number}]: {e}") from None
        platforms = tuple(parsed_platforms)
    every = section.convert("every", parse_duration, None)
    if every is not None and every <= 0:
        raise ConfigError(f"{path}.every: must be positive (unset: at start only)")
    pin = section.get("pin", bool, False)
    section.finish()
    return WarmConfig(tuple(refs), platforms, every, pin)


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """
    Read and validate the file at C{path}, or the embedded default when
    C{path} is C{None}.
    """
    if path is None:
        return parse_config({}, environ)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {e.start}") from None
    try:
        return parse_config(data, environ)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
