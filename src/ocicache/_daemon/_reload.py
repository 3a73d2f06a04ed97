"""
C{SIGHUP}: read the config file again and swap what can change while
connections and downloads go on.

Swapped at once, for requests that start afterwards: the policy (the
upstreams' patterns and the C{[[rule]]} list), client authentication, and
each upstream's credentials (a password file read again, a credential
program's cached answer dropped).  What is bound at start-up (listeners,
the cache directory and its limits, the set of upstreams and where they
are) keeps its running value; the keys whose new values wait for a
restart are named in one log line.  A new file that does not load is
refused in one log line, and the running config stays in force.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from .._identity._authenticator import Authenticator
from .._oci._services import Services
from .._ops._config import Config, ConfigError, UpstreamConfig, load_config
from .._ops._metrics import Metrics
from .._ops._reactor import Reactor
from .._policy import Policy
from .._upstream._client import Upstream
from .._upstream._credentials import CredentialSource, credentials_for

__all__ = ["Reloader", "restart_only_changes"]

log = Logger()

RELOADABLE_UPSTREAM_KEYS = frozenset({"credentials", "credential_command", "include", "exclude", "tags",
                                      "digest_only", "offline"})
"""The L{UpstreamConfig} fields a reload swaps; every other field waits for a restart."""


def restart_only_changes(running: Config, new: Config) -> list[str]:
    """
    The dotted keys whose value in C{new} differs from the C{running} one
    but that only a restart can apply.
    """
    changed = []
    for section in ("server", "cache", "metrics"):
        old_value, new_value = getattr(running, section), getattr(new, section)
        for field in attrs.fields(type(old_value)):
            if getattr(old_value, field.name) != getattr(new_value, field.name):
                changed.append(f"{section}.{field.name}")
    old_upstreams = {upstream.name: upstream for upstream in running.upstreams}
    new_upstreams = {upstream.name: upstream for upstream in new.upstreams}
    for name in old_upstreams.keys() - new_upstreams.keys():
        changed.append(f"upstream[{name}] (removed: refused now, still routed until a restart)")
    for name in new_upstreams.keys() - old_upstreams.keys():
        changed.append(f"upstream[{name}] (added)")
    for name in old_upstreams.keys() & new_upstreams.keys():
        old_upstream, new_upstream = old_upstreams[name], new_upstreams[name]
        for field in attrs.fields(UpstreamConfig):
            if field.name in RELOADABLE_UPSTREAM_KEYS:
                continue
            if getattr(old_upstream, field.name) != getattr(new_upstream, field.name):
                changed.append(f"upstream[{name}].{field.name}")
    if running.warm != new.warm:
        # The warm timers are set up at start.
        changed.append("warm")
    if running.admin != new.admin:
        # The admin API's token and the pull log's retention are read at start.
        changed.append("admin")
    if running.proxy != new.proxy:
        # Each upstream's agent chose its routes at start.
        changed.append("proxy")
    if running.fleet != new.fleet:
        # The Redis connection and the internal listener are set up at start.
        changed.append("fleet")
    if running.git != new.git:
        # The /git/ resource and its upstreams' clients are set up at start.
        changed.append("git")
    if running.files != new.files:
        # The file remotes' service is built at start (ocicache._files).
        changed.append("files")
    return sorted(changed)


class Reloader:
    """
    Reloads the config from C{path} on L{reload}, and on C{SIGHUP} once
    L{install}ed.  The file is read in C{pool}, never in the reactor
    thread; a reload asked for while one runs runs once more after it.
    """

    def __init__(
        self,
        path: str | None,
        running: Config,
        services: Services,
        upstreams: Mapping[str, Upstream],
        reactor: Reactor,
        pool: ThreadPool,
        adjust: Callable[[Config], Config] = lambda config: config,
        metrics: Metrics | None = None,
        authenticator_for: Callable[[Config], Authenticator] | None = None,
    ) -> None:
        """
        @param authenticator_for: builds client authentication for a new
            config (L{OcicacheService.authenticator_for}); C{None}: it is
            left as it is.
        """
        self._path = path
        self._running = running
        self._services = services
        self._upstreams = upstreams
        self._reactor = reactor
        self._pool = pool
        self._adjust = adjust
        self._metrics = metrics
        self._authenticator_for = authenticator_for
        self._busy = False
        self._again = False
        self._previous: Any = None
        self.reloads = 0
        """Reloads applied so far."""

    # -- the signal

    def install(self) -> None:
        """Reload on C{SIGHUP}, until L{uninstall}."""
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # In the main thread, between two bytecodes of whatever ran: hand
        # the work to the reactor's loop.
        reactor: IReactorFromThreads = self._reactor
        reactor.callFromThread(self.reload)

    # -- the reload

    def reload(self) -> Deferred[None]:
        """Reload now (or once the reload in progress has finished)."""
        if self._busy:
            self._again = True
            return succeed(None)
        self._busy = True
        return Deferred.fromCoroutine(self._reload())

    async def _reload(self) -> None:
        try:
            while True:
                self._again = False
                await self._once()
                if not self._again:
                    return
        finally:
            self._busy = False

    async def _once(self) -> None:
        if self._path is None:
            log.warn("Config reload: ocicache runs on the embedded default (no --config): nothing to reload")
            return
        try:
            new = await deferToThreadPool(self._reactor, self._pool, load_config, self._path)
        except ConfigError as e:
            log.error("Config reload refused, the running config stays in force: {error}", error=str(e))
            self._count("refused")
            return
        new = self._adjust(new)
        try:
            policy = Policy.from_config(new)
            clock: IReactorTime = self._reactor
            credentials: dict[str, CredentialSource] = {}
            for name in self._upstreams:
                fresh = new.upstream_named(name)
                if fresh is not None:
                    credentials[name] = credentials_for(fresh, clock)
            # Everything that may still fail is built first, so a failure
            # swaps nothing; the rest are assignments, in this one reactor
            # turn.
            authenticator = self._authenticator_for(new) if self._authenticator_for is not None else None
            if authenticator is not None:
                self._services.authenticator = authenticator
            self._services.policy = policy
            for name, source in credentials.items():
                self._upstreams[name].credentials = source
            for name in credentials:
                fresh = new.upstream_named(name)
                # New credentials, a fixed upstream: a reload tries at once.
                self._upstreams[name].circuit.reset()
                if fresh is not None and self._upstreams[name].circuit.offline != fresh.offline:
                    self._upstreams[name].circuit.offline = fresh.offline
                    log.info("{upstream}: {state}", upstream=name,
                             state="offline: serving only what the cache holds" if fresh.offline else "online again")
        except Exception:
            log.failure("Config reload failed, the running config stays in force")
            self._count("refused")
            return
        self.reloads += 1
        self._count("applied")
        log.info("Config reloaded from {path}: policy, client authentication and upstream credentials replaced",
                 path=self._path)
        waiting = restart_only_changes(self._running, new)
        if waiting:
            log.warn("Config reload: {keys} changed, which needs a restart; the running values stay until then",
                     keys=", ".join(waiting))

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.config_reloads.labels(result).inc()

