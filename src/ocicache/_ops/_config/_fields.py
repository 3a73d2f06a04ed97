"""
How the schema is written and read.  L{key} declares one TOML key on an
attrs class: its kind (L{ocicache._ops._config._types}), default, bounds
and one-line help.  L{structure} reads a TOML table into such a class
with cattrs: every key through its kind, unknown keys refused, and the
first error raised as one L{Invalid} that names its key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from attrs import NOTHING, frozen
from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, override

from ._types import Invalid, Kind

__all__ = ["KeyInfo", "Table", "info", "key", "keys", "render_path", "structure"]

T = TypeVar("T")

_METADATA = "ocicache.config"


@frozen
class KeyInfo:
    """What the schema says about one key, for the loader and the reference."""

    kind: Kind[Any]
    help: str
    """One line: the reference's "meaning" column."""
    note: str
    """The example file's comment above the key (several lines); by default C{help}."""
    example: object
    """Written in the example file, uncommented; C{NOTHING}: the default, commented out."""
    required: str | None
    """When set, the key must be given; this says what to give."""
    shown: str | None
    """The default as the reference says it, when it is not a plain value (computed, or unset)."""
    commented: bool | None
    """Written commented out in the example file; C{None}: when it has no default."""


def key(kind: Kind[Any], help: str, *, default: Any = None, note: str = "", example: object = NOTHING,
        required: str | None = None, shown: str | None = None, commented: bool | None = None,
        factory: Any = None) -> Any:
    """
    One TOML key of a schema class: its value type, its help, and its
    default (C{None}: unset; C{factory}: computed when absent).
    """
    metadata = {_METADATA: KeyInfo(kind, help, note or help, example, required, shown, commented)}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


def info(attribute: attrs.Attribute[Any]) -> KeyInfo | None:
    found = attribute.metadata.get(_METADATA)
    return found if isinstance(found, KeyInfo) else None


def keys(table: type) -> list[tuple[str, KeyInfo, Any]]:
    """A schema class's keys in order: name, what the schema says, the default (or C{NOTHING})."""
    found = []
    # A base class's keys (the credential program's) after the table's own.
    for attribute in sorted(attrs.fields(table), key=lambda attribute: attribute.inherited):
        described = info(attribute)
        if described is not None:
            default = attribute.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = NOTHING
            found.append((attribute.name, described, default))
    return found


def render_path(path: tuple[str | int, ...]) -> str:
    """C{("upstream", 1, "url")} is C{upstream[1].url}."""
    text = ""
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


def _first_error(error: ClassValidationError) -> Invalid:
    """The first of cattrs' errors, in key order (unknown keys last), with its key."""
    for exception in error.exceptions:
        if isinstance(exception, ForbiddenExtraKeysError):
            return Invalid(f"unknown key(s): {', '.join(sorted(exception.extra_fields))}")
        names = [note.name for note in getattr(exception, "__notes__", ())
                 if isinstance(note, AttributeValidationNote)]
        invalid = exception if isinstance(exception, Invalid) else Invalid(str(exception))
        return invalid.at(names[0]) if names else invalid
    return Invalid("cannot be read")


def _is_schema(cls: Any) -> bool:
    return attrs.has(cls) and any(info(attribute) is not None for attribute in attrs.fields(cls))


def _table_hook(cls: type[Any]) -> Any:
    def kind_hook(kind: Kind[Any]) -> Any:
        return lambda value, _type: kind(value)

    overrides: dict[str, Any] = {attribute.name: override(struct_hook=kind_hook(described.kind))
                 for attribute in attrs.fields(cls) if (described := info(attribute)) is not None}
    generated = make_dict_structure_fn(
        cls, _converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True, **overrides)

    def hook(value: object, _type: object) -> Any:
        if not isinstance(value, Mapping):
            raise Invalid("expected a table")
        try:
            table = generated(dict(value), cls)
        except ClassValidationError as e:
            raise _first_error(e) from None
        for name, described, _ in keys(cls):
            if described.required is not None and getattr(table, name) is None:
                raise Invalid(f"required ({described.required})", (name,))
        return table

    return hook


_converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
_converter.register_structure_hook_factory(_is_schema, _table_hook)


def structure(value: object, cls: type[T]) -> T:
    """
    Read the TOML table C{value} into the schema class C{cls}.

    @raise Invalid: At the first key that is wrong, or for unknown keys.
    """
    table: T = _converter.structure(value, cls)
    return table


@frozen
class Table(Kind[T]):
    """A table inside a table: C{[[auth.oidc]]}, read as its schema class."""

    table: type[T]
    name = "table"

    def __call__(self, value: object) -> T:
        return structure(value, self.table)
