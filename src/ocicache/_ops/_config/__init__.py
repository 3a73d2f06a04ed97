"""
Configuration: one TOML file, validated at start-up into frozen objects.

A bad file must stop the daemon with one line that names the key and what
is wrong with it (C{upstream[2].url: ...}), never a traceback.  Each key
is declared once, in a schema class, with its kind, default and help
(L{_fields.key}); the loader reads each table with cattrs, checks the
rules between keys and tables, and then reads the files the keys name,
in one place (L{_secrets}).  The example file and the reference page are
generated from the same schema (L{_reference}).

    _types.py      the kinds of value: durations, sizes, numbers, strings, lists, bounds
    _names.py      the kinds that name things: URLs, hosts, images, platforms, globs
    _fields.py     key(): one key's declaration; structure(): a table read with cattrs
    _local.py      [server], [cache], [metrics]: schema and value in one
    _warm.py       [[warm]]
    _upstream.py   [[upstream]] and the credential-program keys
    _access.py     [auth], [[auth.oidc]] and [[rule]]
    _storage.py    [storage]
    _fleet.py      [fleet]
    _values.py     the values the daemon reads (Config, UpstreamConfig, ...)
    _secrets.py    the one reader of files and the environment
    _load.py       SECTIONS, parse_config, load_config
    _reference.py  etc/ocicache.toml and docs/reference/configuration.md
"""

from ._files import FileKind, FilesConfig, RemoteConfig
from ._git import GitConfig, GitUpstreamConfig
from ._load import WELL_KNOWN_UPSTREAMS, load_config, parse_config
from ._local import CacheConfig, MetricsConfig, ServerConfig, default_cache_dir
from ._names import check_glob
from ._types import parse_duration, parse_size
from ._values import (
    MAX_STALE_LIMIT,
    STALE_FAILURES,
    AuthConfig,
    Config,
    ConfigError,
    CredentialCommand,
    Credentials,
    FleetConfig,
    OIDCIssuerConfig,
    RuleConfig,
    S3Config,
    S3Keys,
    StalePolicy,
    StorageConfig,
    UpstreamConfig,
)
from ._warm import WarmConfig

__all__ = [
    "AuthConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "CredentialCommand",
    "Credentials",
    "FileKind",
    "FilesConfig",
    "FleetConfig",
    "GitConfig",
    "GitUpstreamConfig",
    "MAX_STALE_LIMIT",
    "MetricsConfig",
    "OIDCIssuerConfig",
    "RemoteConfig",
    "RuleConfig",
    "S3Config",
    "S3Keys",
    "STALE_FAILURES",
    "ServerConfig",
    "StalePolicy",
    "StorageConfig",
    "UpstreamConfig",
    "WELL_KNOWN_UPSTREAMS",
    "WarmConfig",
    "check_glob",
    "default_cache_dir",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]
