"""
What is checked once the config is read and before anything is served:
the Python packages the configured features need (a missing one stops
the start with one line naming the feature and what to install, not a
traceback on the first request), and configurations that lend the
mirror's upstream credentials to whoever can reach it (a warning).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

from attrs import frozen
from twisted.logger import Logger

from .._ops._config import Config
from ._listening import beyond_loopback

__all__ = ["lends_credentials", "missing_dependency", "warn_at_start"]

log = Logger()


@frozen
class _Need:
    """Modules a configured feature imports, and how to install them."""

    feature: str
    modules: tuple[str, ...]
    install: str


def _needs(config: Config) -> Iterator[_Need]:
    if config.storage.backend == "s3":
        # _storage/_s3.py signs with botocore, imported on first use.
        yield _Need('[storage] backend = "s3"', ("botocore.auth", "botocore.awsrequest", "botocore.credentials"),
                    "pip install 'ocicache[s3]'")
    if config.fleet is not None:
        yield _Need("[fleet]", ("txredisapi",), "pip install 'ocicache'")


def missing_dependency(config: Config) -> str | None:
    """
    The one-line error for the first package a configured feature needs
    and cannot import, or L{None} when all are there.  Imports them: it
    runs before the reactor does.
    """
    for need in _needs(config):
        for module in need.modules:
            try:
                importlib.import_module(module)
            except ImportError:
                package = module.split(".", 1)[0]
                return f"{need.feature} needs the Python package {package}, which is not installed: {need.install}"
    return None


def lends_credentials(config: Config) -> list[str]:
    """
    The listeners through which anyone who can reach them pulls with the
    mirror's upstream credentials: those reachable beyond loopback, when
    an upstream has credentials and C{[auth]} is off.
    """
    if config.auth is not None:
        return []
    if not any(upstream.credentials is not None or upstream.credential_command is not None
               or upstream.token is not None for upstream in config.upstreams):
        return []
    return [listen for listen in config.server.listen if beyond_loopback(listen)]


def warn_at_start(config: Config) -> None:
    """
    Log what the operator should know of C{config} before it serves.
    """
    for listen in lends_credentials(config):
        log.warn("Anyone who can reach {listen} pulls with this mirror's upstream credentials: [auth] is off"
                 " and an upstream has credentials (turn [auth] on, or listen on loopback only;"
                 " see docs/sharing-credentials.md)", listen=listen)
