"""
The C{[[git]]} tables, as the git front-end reads them: declared in the
config schema (L{ocicache._ops._config._git}), where every section lives.

    [[git]]
    name = "github.com"            # what clients write after /git/
    url = "https://github.com"     # where its repositories live
    stale_refs = false             # serve the last advertisement when it is down
    proof_ttl = "60s"              # how long a client's access proof is reused
"""

from __future__ import annotations

from collections.abc import Mapping

from .._ops._config import ConfigError, GitConfig, GitUpstreamConfig, parse_config
from .._ops._config._git import MODES

__all__ = ["MODES", "GitConfig", "GitUpstreamConfig", "parse_git"]


def parse_git(raw: object, environ: Mapping[str, str] | None = None) -> GitConfig:
    """The C{git} array of tables alone, validated (L{ConfigError} names the key)."""
    git = parse_config({"git": raw}, environ).git
    if git is None:
        raise ConfigError("git: no tables")
    return git
