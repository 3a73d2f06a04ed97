"""
The C{[[files]]} remotes and the C{[files_cache]} table, as the files
front-end reads them: declared in the config schema
(L{ocicache._ops._config._files}), where every section lives.

    [files_cache]
    max_size = "20GiB"          # deprecated, ignored: [cache] max_size bounds the files too

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

from collections.abc import Mapping

from .._ops._config import ConfigError, FileKind, FilesConfig, RemoteConfig, parse_config

__all__ = ["FileKind", "FilesConfig", "RemoteConfig", "parse_files"]


def parse_files(tables: object, cache: object, environ: Mapping[str, str] | None = None) -> FilesConfig:
    """The C{[[files]]} list and the C{[files_cache]} table alone, validated (L{ConfigError} names the key)."""
    files = parse_config({"files": tables, "files_cache": cache}, environ).files
    if files is None:
        raise ConfigError("files: no tables")
    return files
