"""
C{etc/ocicache.toml} (the commented example) and
C{docs/reference/configuration.md} (the reference page), generated from
the schema: each key's help, note, default and example as declared with
L{key}, each section's intro from its schema class's docstring.

    python -m ocicache._ops._config._reference --write    # from the repository's root
    python -m ocicache._ops._config._reference --check    # exit 1 when either file differs

tests/test_config_reference.py fails when either file is not what this
generates.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from attrs import NOTHING

from ._fields import KeyInfo, Table, keys
from ._load import SECTIONS, Section
from ._types import ListOf, Refused

__all__ = ["EXAMPLE_PATH", "REFERENCE_PATH", "example_file", "main", "reference_page", "toml_literal"]

EXAMPLE_PATH = Path("etc/ocicache.toml")
REFERENCE_PATH = Path("docs/reference/configuration.md")
_COMMAND = "python -m ocicache._ops._config._reference --write"

_HEADER = f"""\
# ocicache configuration: every key, with its default.
# Run with:  twistd -n ocicache --config /etc/ocicache/ocicache.toml
# Durations take s, m, h or d ("90s", "5m", "12h", "7d").
# Sizes take KiB, MiB, GiB or TiB ("150MiB", "50GiB").
# A secret (password, token, key) is never written here: <name>_file names a
# file whose first line is the secret, <name>_env a variable that holds it;
# one trailing line ending is removed, nothing else.
# Generated from the schema by `{_COMMAND}`.
"""


def toml_literal(value: object) -> str:
    """A TOML literal: strings, booleans, numbers, arrays and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(name)} = {toml_literal(item)}" for name, item in value.items()) + " }"
    raise TypeError(f"no TOML literal for {value!r}")


def _key(name: object) -> str:
    """A TOML key: bare when it may be, else quoted (TOML 1.0, "Keys")."""
    text = str(name)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text)


def _plain(text: str | None) -> str:
    """A docstring as prose: its indent and its epytext markup (C{...}, L{...}) dropped."""
    return re.sub(r"[CLI]\{([^}]*)\}", r"\1", inspect.cleandoc(text or ""))


def _shown(described: KeyInfo, default: Any) -> object:
    """The value the example file writes for a key: its example, or its default."""
    if described.example is not NOTHING:
        return described.example
    if default is None or default is NOTHING:
        raise ValueError(f"a key with no default needs an example: {described.help}")
    return described.kind.show(default)


def _commented(section: Section, described: KeyInfo, default: Any) -> bool:
    if section.example == "commented":
        return True
    if described.commented is not None:
        return described.commented
    return section.example == "keys" or ((default is None or default is NOTHING) and described.required is None)


def _comment(text: str) -> Iterator[str]:
    for line in text.splitlines():
        yield f"# {line}".rstrip()


def _table_lines(section: Section, schema: type, header: str) -> Iterator[str]:
    nested = []
    yield from _comment(_plain(schema.__doc__))
    yield f"# {header}" if section.example == "commented" else header
    for name, described, default in keys(schema):
        if isinstance(described.kind, Refused):
            continue
        if isinstance(described.kind, ListOf) and isinstance(described.kind.item, Table):
            nested.append((name, described.kind.item.table))
            continue
        yield from _comment(described.note)
        line = f"{name} = {toml_literal(_shown(described, default))}"
        yield f"# {line}" if _commented(section, described, default) else line
    for name, table in nested:
        yield from _table_lines(section, table, f"[[{section.name}.{name}]]")


def example_file() -> str:
    """The text of C{etc/ocicache.toml}."""
    parts = [_HEADER]
    for section in SECTIONS:
        schema = section.documented_class
        header = f"[[{section.name}]]" if section.many else f"[{section.name}]"
        text = "\n".join(_table_lines(section, schema, header)) + "\n"
        examples = getattr(schema, "EXAMPLES", "")
        parts.append(text + examples)
    return "\n".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(described: KeyInfo, default: Any) -> str:
    if described.shown is not None:
        return _cell(described.shown)
    if described.required is not None:
        return "required"
    if default is None or default is NOTHING:
        return "unset"
    return f"`{_cell(toml_literal(described.kind.show(default)))}`"


def _reference_tables(name: str, schema: type) -> Iterator[str]:
    nested = []
    yield ""
    yield f"## `{name}`"
    yield ""
    yield " ".join(_plain(schema.__doc__).split())
    yield ""
    yield "| Key | Type | Default | Meaning |"
    yield "| --- | --- | --- | --- |"
    for key_name, described, default in keys(schema):
        if isinstance(described.kind, Refused):
            continue
        if isinstance(described.kind, ListOf) and isinstance(described.kind.item, Table):
            nested.append((key_name, described.kind.item.table))
        yield (f"| `{key_name}` | {_cell(described.kind.describe())} | {_default(described, default)}"
               f" | {_cell(described.help)} |")
    for key_name, table in nested:
        yield from _reference_tables(f"[[{name.strip('[]')}.{key_name}]]", table)


def reference_page() -> str:
    """The text of C{docs/reference/configuration.md}."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the schema by `{_COMMAND}`: edit the schema, not this page. -->",
        "",
        "ocicache reads one TOML file (`twistd -n ocicache --config /etc/ocicache/ocicache.toml`);"
        " without one it runs on the embedded default. The commented example,"
        " `etc/ocicache.toml`, holds every key below.",
        "",
        "- Durations take `s`, `m`, `h` or `d` (`\"90s\"`, `\"5m\"`, `\"12h\"`, `\"7d\"`), or a number of seconds.",
        "- Sizes take `KiB`, `MiB`, `GiB` or `TiB` (`\"150MiB\"`, `\"50GiB\"`), or a number of bytes.",
        "- A secret is never written in the file: `<name>_file` names a file whose first line is the secret,"
        " `<name>_env` an environment variable that holds it; one trailing line ending is removed, nothing"
        " else, and an empty secret is refused.",
        "- An unknown key, or a value of the wrong kind, stops the daemon with one line that names the file"
        " and the key, such as `upstream[1].url: 'ftp://x' must be an http:// or https:// URL with a host`.",
    ]
    for section in SECTIONS:
        header = f"[[{section.name}]]" if section.many else f"[{section.name}]"
        lines.extend(_reference_tables(header, section.documented_class))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    generated = {EXAMPLE_PATH: example_file(), REFERENCE_PATH: reference_page()}
    if argv == ["--write"]:
        for path, text in generated.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return 0
    if argv == ["--check"]:
        stale = [path for path, text in generated.items() if not path.is_file() or path.read_text() != text]
        for path in stale:
            print(f"{path}: differs from the schema; run {_COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    print("usage: python -m ocicache._ops._config._reference --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
