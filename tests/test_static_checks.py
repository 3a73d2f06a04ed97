"""
The type checker, the linter and the import contract are part of the
suite, so that CI fails on a type error, a lint finding or an import
against the layering as it does on a failing test.  All read their
configuration from pyproject.toml: mypy strict over src, tests and bench;
ruff with pyflakes, pycodestyle, isort, bugbear and pyupgrade;
import-linter's layers and forbidden contracts.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ocitest import REPO_ROOT


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


def test_mypy_is_clean() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "src", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_contract_holds() -> None:
    # lint-imports analyses the source tree's ocicache, not an installed copy.
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO_ROOT, "src")}
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
                             " sys.exit(lint_imports_command())"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout
