"""
The configuration's values as the rest of the daemon reads them: frozen,
secrets kept out of C{repr()}.  The tables whose keys map one to one onto
a value are their own schema (L{ocicache._ops._config._local},
L{ocicache._ops._config._warm}); the others are built from their schema
tables (C{_upstream}, C{_access}, C{_storage}, C{_fleet}) once validated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attrs import field, frozen
from hyperlink import DecodedURL

from ..._identity._auth_files import StaticToken
from ._admin import AdminConfig
from ._local import CacheConfig, MetricsConfig, ServerConfig
from ._proxy import ProxyConfig
from ._warm import WarmConfig

if TYPE_CHECKING:
    from ._files import FilesCacheTable, FilesConfig, RemoteConfig
    from ._git import GitConfig

__all__ = [
    "AuthConfig", "Config", "ConfigError", "CredentialCommand", "Credentials", "FleetConfig", "MAX_STALE_LIMIT",
    "OIDCIssuerConfig", "RuleConfig", "S3Config", "S3Keys", "STALE_FAILURES", "StalePolicy", "StorageConfig",
    "UpstreamConfig",
]


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
    include: tuple[str, ...] = ()
    """Globs of the repositories that may be pulled (L{ocicache._policy} compiles them); empty: every one."""
    exclude: tuple[str, ...] = ()
    """Repositories that may not be pulled, whatever C{include} says."""
    tags: tuple[str, ...] = ()
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
    offline: bool = False
    """Never called: only what the cache holds is served (L{ocicache._upstream._circuit})."""
    proxy: str | None = None
    """Its outbound proxy URL, C{""} for none; C{None}: C{[proxy]}'s (L{ProxyConfig.routes_for})."""

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
    identity: str | None = None
    """Matched against C{anonymous}, C{user:NAME}, C{token:NAME} or C{oidc:SUB}."""
    user: str | None = None
    token: str | None = None
    claims: tuple[tuple[str, str], ...] = ()
    upstreams: tuple[str, ...] | None = None
    """Upstream names; C{None}: every upstream."""
    repositories: tuple[str, ...] | None = None
    """Repository patterns; C{None}: every repository."""


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
    git: GitConfig | None = None
    files_remotes: tuple[RemoteConfig, ...] = ()
    """The C{[[files]]} tables."""
    files_cache: FilesCacheTable | None = None
    """C{[files_cache]}; C{None}: no such table."""
    """The C{[[git]]} tables; C{None}: no git host is served."""
    admin: AdminConfig = AdminConfig()
    """The admin API's token and the pull log's retention (C{[admin]})."""
    proxy: ProxyConfig = ProxyConfig()
    """The outbound proxy of the upstreams (C{[proxy]}, else the environment)."""

    @property
    def files(self) -> FilesConfig | None:
        """The file remotes; C{None}: neither C{[[files]]} nor C{[files_cache]}."""
        from ._files import FilesConfig

        if not self.files_remotes and self.files_cache is None:
            return None
        return FilesConfig(self.files_remotes, self.files_cache.max_size if self.files_cache is not None else None)

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


