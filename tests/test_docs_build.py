"""
The documentation site builds with C{mkdocs build --strict}: a broken link
or anchor, a page missing from the nav, a nav entry without its page or a
snippet naming a missing file fails the suite as a failing test does.  The
build reads only the work tree (no plugin fetches anything).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ocitest import REPO_ROOT


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index.html", "getting-started/index.html", "reference/configuration/index.html",
                 "design/index.html", "bench/throughput.png"):
        assert (site / page).is_file(), page
    # The snippets were included, not left as their markers.
    clients = (site / "clients" / "index.html").read_text()
    assert "registry-mirrors" in clients and "--8&lt;--" not in clients
