"""
etc/ocicache.toml and docs/reference/configuration.md are generated from
the config schema (L{ocicache._ops._config._reference}): they fail here
when they drift from it, and they hold every key it declares.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ocicache._ops._config import load_config
from ocicache._ops._config._fields import Table, keys
from ocicache._ops._config._load import SECTIONS
from ocicache._ops._config._reference import EXAMPLE_PATH, REFERENCE_PATH, example_file, main, reference_page
from ocicache._ops._config._types import ListOf, Refused

REPO = Path(__file__).resolve().parent.parent
COMMAND = "python -m ocicache._ops._config._reference --write"


@pytest.mark.parametrize("path, generate", [(EXAMPLE_PATH, example_file), (REFERENCE_PATH, reference_page)])
def test_the_file_is_what_the_schema_generates(path: Path, generate: object) -> None:
    assert callable(generate)
    assert (REPO / path).read_text() == generate(), f"{path} differs from the schema: run {COMMAND}"


def _declared_in(table: str, schema: type) -> list[tuple[str, str]]:
    declared = []
    for name, described, _ in keys(schema):
        kind = described.kind
        if isinstance(kind, ListOf) and isinstance(kind.item, Table):
            declared += [(f"{table}.{name}", "[table]"), *_declared_in(f"{table}.{name}", kind.item.table)]
        elif not isinstance(kind, Refused):
            declared.append((table, name))
    return declared


def _declared() -> list[tuple[str, str]]:
    """Every key of every section, C{"[table]"} for a table of tables ([[auth.oidc]])."""
    declared = []
    for section in SECTIONS:
        declared += _declared_in(section.name, section.documented_class)
    return declared


def test_every_key_is_in_both_files() -> None:
    example = (REPO / EXAMPLE_PATH).read_text()
    reference = (REPO / REFERENCE_PATH).read_text()
    declared = _declared()
    assert {("upstream", "url"), ("storage", "bucket"), ("fleet", "secret_file"), ("auth.oidc", "issuer"),
            ("auth.oidc", "[table]")} <= set(declared)
    for section, name in declared:
        if name == "[table]":
            assert f"# [[{section}]]" in example and f"## `[[{section}]]`" in reference
            continue
        assert re.search(rf"^(# )?{name} = ", example, re.M), f"[{section}] {name} is not in {EXAMPLE_PATH}"
        assert f"| `{name}` |" in reference, f"[{section}] {name} is not in {REFERENCE_PATH}"


def test_the_example_file_loads_and_uncommented_is_valid(tmp_path: Path) -> None:
    """The example loads, and each commented-out key is valid TOML once uncommented."""
    config = load_config(str(REPO / EXAMPLE_PATH), {})
    assert config.default_upstream is not None and config.default_upstream.name == "docker.io"
    names = {name for _, name in _declared()}
    commented = re.findall(r"^# ([a-z0-9_]+ = .*)$", example_file(), re.M)
    assert len(commented) > 40
    for line in commented:
        if line.split(" = ")[0] in names:
            tomllib.loads(line.split("  #")[0])


def test_check_says_which_file_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--check"]) == 1
    assert f"{EXAMPLE_PATH}: differs from the schema" in capsys.readouterr().err
    assert main(["--write"]) == 0
    assert main(["--check"]) == 0
    (tmp_path / REFERENCE_PATH).write_text("stale\n")
    assert main(["--check"]) == 1
    assert capsys.readouterr().err.strip() == f"{REFERENCE_PATH}: differs from the schema; run {COMMAND}"
    assert main([]) == 2
