"""
Descriptors and the connection cap: the soft C{RLIMIT_NOFILE} raised to
the hard one, the default C{[server] max_connections} derived from it,
and one warning when the limit is low or the configured cap does not fit.
"""

from __future__ import annotations

from resource import RLIM_INFINITY, RLIMIT_NOFILE, getrlimit, setrlimit

from twisted.logger import Logger

__all__ = ["default_max_connections", "raise_descriptor_limit", "warn_about_descriptors"]

log = Logger()

_RESERVED_DESCRIPTORS = 256
"""
Descriptors kept for everything but client sockets: upstream connections
(16 per upstream host), downloads' temp files, the database, the log, the
listeners, the reactor's own.
"""

_LOW_DESCRIPTOR_LIMIT = 4096
_warned_about_descriptors = False


def _nr_open() -> int:
    """Linux's ceiling for C{RLIMIT_NOFILE} (C{fs.nr_open})."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_descriptor_limit() -> int:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard one (an unprivileged process
    may) and return the soft limit now in effect.
    """
    soft, hard = getrlimit(RLIMIT_NOFILE)
    target = _nr_open() if hard == RLIM_INFINITY else hard
    if soft == RLIM_INFINITY:
        return target
    if soft < target:
        try:
            setrlimit(RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def default_max_connections(limit: int) -> int:
    """
    The default C{[server] max_connections} under a descriptor limit of
    C{limit}: half of what the reserve leaves, since a client reading a
    cached blob holds two descriptors (its socket and the blob's file).
    """
    return max(16, (limit - _RESERVED_DESCRIPTORS) // 2)


def warn_about_descriptors(limit: int, derived: int, configured: int | None) -> None:
    """
    Warn, once per process, that C{configured} connections cannot all be
    served under C{limit} descriptors, or that the limit itself is low.
    """
    global _warned_about_descriptors
    if _warned_about_descriptors:
        return
    if configured is not None and configured > derived:
        _warned_about_descriptors = True
        log.warn(
            "server.max_connections = {configured} is more than the descriptor limit (RLIMIT_NOFILE {limit})"
            " leaves room for (about {derived}): past that, accepting connections and opening cache files"
            " fail with EMFILE; raise LimitNOFILE= (systemd) or ulimit -n",
            configured=configured, limit=limit, derived=derived,
        )
    elif configured is None and limit < _LOW_DESCRIPTOR_LIMIT:
        _warned_about_descriptors = True
        log.warn(
            "The descriptor limit (RLIMIT_NOFILE) is only {limit}: at most {derived} client connections at once;"
            " raise LimitNOFILE= (systemd) or ulimit -n to serve more",
            limit=limit, derived=derived,
        )
