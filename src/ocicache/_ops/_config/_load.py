"""
Reading a configuration: the TOML file, then every table validated
against its schema, then the rules between tables, and only then the
files and variables the keys name (L{Files}).

The top-level tables are the declared list L{SECTIONS}.  A protocol adds
its own as a new schema class and one entry, for example::

    @frozen
    class GitTable:
        \"""One [[git]] remote: ...\"""

        url: DecodedURL = key(HttpURL("..."), "The remote.", required="...")

        def check(self) -> None: ...
        def build(self, files: Files, where: str) -> GitRemote: ...

    Section("git", GitTable, "git", many=True)   # in SECTIONS; Config gains git: tuple[GitRemote, ...] = ()

and its keys appear in C{etc/ocicache.toml} and the reference page when
they are generated again (L{ocicache._ops._config._reference}).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, Literal

from attrs import frozen
from hyperlink import DecodedURL

from ..._spec._reference import parse_image_reference
from ._access import AuthTable, RuleTable
from ._admin import AdminTable
from ._fields import render_path, structure
from ._files import FilesCacheTable, FilesConfig, FilesTable
from ._fleet import FleetTable
from ._git import GitConfig, GitTable
from ._local import CacheConfig, MetricsConfig, ServerConfig
from ._proxy import ProxyTable
from ._secrets import Files
from ._storage import S3Table, storage_table
from ._types import Invalid
from ._upstream import UpstreamTable
from ._values import Config, ConfigError, StorageConfig, UpstreamConfig
from ._warm import WarmConfig

__all__ = ["SECTIONS", "Section", "WELL_KNOWN_UPSTREAMS", "load_config", "parse_config"]

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


def _well_known() -> tuple[UpstreamConfig, ...]:
    return tuple(UpstreamConfig(name=name, url=DecodedURL.from_text(url), default=name == "docker.io")
                 for name, url in WELL_KNOWN_UPSTREAMS)


@frozen
class Section:
    """
    One top-level table: its TOML name, its schema class (or, given the
    table, which schema applies), the L{Config} attribute it fills, and
    what that attribute is when the file has no such table.  A schema
    class with C{check()} has rules between its keys; one with
    C{build(files, where)} is turned into the value the daemon reads.
    """

    name: str
    schema: type | Callable[[object], type]
    attribute: str
    many: bool = False
    """An array of tables: C{[[name]]}."""
    absent: Callable[[], Any] | None = None
    """The value without the table; C{None}: the table read as empty."""
    example: Literal["written", "keys", "commented"] = "written"
    """
    How C{etc/ocicache.toml} shows it: C{written} (its keys set, or commented
    out when they have no default), C{keys} (the header set, every key
    commented out) or C{commented} (all of it commented out).
    """

    documented: type | None = None
    """The schema the reference documents when C{schema} is chosen per table: the one with every key."""
    gather: Callable[[tuple[Any, ...]], Any] | None = None
    """For an array of tables: what the tables' values together make (C{None}: their tuple)."""

    def table_class(self, value: object) -> type:
        if isinstance(self.schema, type):
            return self.schema
        return self.schema(value)

    @property
    def documented_class(self) -> type:
        return self.documented or self.table_class({})


SECTIONS: tuple[Section, ...] = (
    Section("server", ServerConfig, "server"),
    Section("cache", CacheConfig, "cache"),
    Section("metrics", MetricsConfig, "metrics"),
    Section("fleet", FleetTable, "fleet", absent=lambda: None, example="commented"),
    Section("warm", WarmConfig, "warm", many=True, absent=tuple),
    Section("auth", AuthTable, "auth", absent=lambda: None, example="commented"),
    Section("storage", storage_table, "storage", absent=StorageConfig, example="keys", documented=S3Table),
    Section("admin", AdminTable, "admin", example="commented"),
    Section("proxy", ProxyTable, "proxy", example="commented"),
    Section("upstream", UpstreamTable, "upstreams", many=True, absent=_well_known),
    Section("rule", RuleTable, "rules", many=True, absent=tuple, example="commented"),
    Section("git", GitTable, "git", many=True, absent=lambda: None, gather=GitConfig.gathered, example="commented"),
    Section("files", FilesTable, "files_remotes", many=True, absent=tuple, gather=FilesConfig.gathered,
            example="commented"),
    Section("files_cache", FilesCacheTable, "files_cache", absent=lambda: None, example="commented"),
)
"""The top-level tables, in the order they are read, documented and written in the example file."""


def _read(section: Section, value: object) -> Any:
    """One section's table, or array of tables, validated: its schema's table(s)."""
    if not section.many:
        table: object = structure(value, section.table_class(value))
        _check(table)
        return table
    if not isinstance(value, list):
        raise Invalid(f"expected an array of tables ([[{section.name}]])")
    tables: list[object] = []
    for index, item in enumerate(value):
        try:
            tables.append(structure(item, section.table_class(item)))
            _check(tables[-1])
        except Invalid as e:
            raise e.at(index) from None
    return tables


def _check(table: object) -> None:
    check = getattr(table, "check", None)
    if check is not None:
        check()


def _build(section: Section, table: object, files: Files, index: int | None) -> object:
    build = getattr(table, "build", None)
    if build is None:
        return table
    return build(files, render_path((section.name,) if index is None else (section.name, index)))


def _check_document(tables: Mapping[str, Any]) -> None:
    """The rules between tables: upstream names, the default, what rules and [[warm]] name."""
    upstreams: list[UpstreamTable] = tables.get("upstream", [])
    if "upstream" in tables and not upstreams:
        raise Invalid("at least one [[upstream]] is required", ("upstream",))
    names = [upstream.name for upstream in upstreams] or [name for name, _ in WELL_KNOWN_UPSTREAMS]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise Invalid(f"{name!r} is configured twice", ("upstream", index, "name"))
    if sum(upstream.default for upstream in upstreams) > 1:
        raise Invalid("only one upstream may set default = true", ("upstream",))
    has_default = "upstream" not in tables or any(upstream.default for upstream in upstreams)
    for index, rule in enumerate(tables.get("rule", [])):
        for position, name in enumerate(rule.upstreams or ()):
            if name not in names:
                raise Invalid(f"{name[:80]!r} is not a configured upstream", ("rule", index, "upstreams", position))
    for index, warm in enumerate(tables.get("warm", [])):
        for number, ref in enumerate(warm.refs):
            registry = parse_image_reference(ref).registry
            where = ("warm", index, "refs", number)
            if registry is None and not has_default:
                raise Invalid(f"{ref!r} names no registry and no upstream is the default", where)
            if registry is not None and registry not in names:
                raise Invalid(f"no [[upstream]] is named {registry!r}", where)


def parse_config(data: Mapping[str, object], environ: Mapping[str, str] | None = None) -> Config:
    """
    Validate a parsed TOML document into a L{Config}.  Missing sections
    take the embedded defaults; with no C{[[upstream]]} at all, the
    well-known public registries are configured, Docker Hub the default.
    """
    files = Files(os.environ if environ is None else environ)
    try:
        unknown = sorted(set(data) - {section.name for section in SECTIONS})
        tables: dict[str, Any] = {}
        for section in SECTIONS:
            if section.name in data:
                try:
                    tables[section.name] = _read(section, data[section.name])
                except Invalid as e:
                    raise e.at(section.name) from None
            elif section.absent is None:
                tables[section.name] = _read(section, {})
        if unknown:
            raise ConfigError(f"top level: unknown key(s): {', '.join(unknown)}")
        _check_document(tables)
        values: dict[str, Any] = {}
        for section in SECTIONS:
            if section.name not in tables:
                values[section.attribute] = section.absent() if section.absent is not None else None
            elif section.many:
                built = []
                for index, table in enumerate(tables[section.name]):
                    try:
                        built.append(_build(section, table, files, index))
                    except Invalid as e:
                        raise e.at(section.name, index) from None
                try:
                    values[section.attribute] = (
                        tuple(built) if section.gather is None else section.gather(tuple(built)))
                except Invalid as e:
                    raise e.at(section.name) from None
            else:
                try:
                    values[section.attribute] = _build(section, tables[section.name], files, None)
                except Invalid as e:
                    raise e.at(section.name) from None
    except Invalid as e:
        raise ConfigError(f"{render_path(e.path)}: {e.message}" if e.path else e.message) from None
    return Config(**values)


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
