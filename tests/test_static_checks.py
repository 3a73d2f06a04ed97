"""
The type checker and the linter are part of the suite, so that CI fails on
a type error or a lint finding as it does on a failing test.  Both read
their configuration from pyproject.toml: mypy strict over src, tests and
bench; ruff with pyflakes, pycodestyle, isort, bugbear and pyupgrade.
"""

from __future__ import annotations

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
