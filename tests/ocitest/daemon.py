"""
The real ocicache daemon, run as C{twistd -n --pidfile= ocicache --config FILE}
in a subprocess.

    cfg = write_config(path, port=port, cache_dir=cache,
                       upstreams=[Upstream("docker.io", hop.url, default=True)])
    d = Daemon(cfg, port=port, workdir=work).start()   # waits for GET /v2/ -> 200
    d.url  ->  "http://127.0.0.1:PORT"
    d.stop()                                            # SIGTERM, SIGKILL after 10 s

C{python -m twisted} is Twisted's I{twist} runner, which takes neither C{-n}
nor C{--pidfile}; so twistd is run as
C{sys.executable -c "from twisted.scripts.twistd import run; run()" ...}:
the interpreter running the tests, whatever C{twistd} script is on PATH.

C{PYTHONPATH} starts with the source tree (C{<repo>/src}), so C{import
ocicache} is the work tree's and Twisted finds
C{<repo>/src/twisted/plugins/ocicache_plugin.py}
(Twisted's plugin loader scans every C{twisted/plugins} directory on
C{sys.path}; it may write a C{dropin.cache} next to the plugin).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocicache._ops._config._reference import toml_literal

from . import SRC_ROOT, free_port, log_tail, spawn, stop_process, wait_for_http

__all__ = [
    "Daemon",
    "DaemonPool",
    "Upstream",
    "config_text",
    "daemon_env",
    "default_upstreams",
    "start_daemon",
    "twistd_command",
    "write_config",
]

TWISTD = "from twisted.scripts.twistd import run; run()"


def daemon_root() -> str:
    """
    The directory put first on the daemon's C{PYTHONPATH}: the source
    tree (C{<repo>/src}), unless C{$OCITEST_DAEMON_ROOT} names another tree (one with
    C{twisted/plugins/ocicache_plugin.py}), e.g. to try the harness on a
    stand-in daemon.
    """
    return os.environ.get("OCITEST_DAEMON_ROOT") or SRC_ROOT


@dataclass
class Upstream:
    """
    One C{[[upstream]]} table.  C{extra} holds further keys verbatim.
    """

    name: str
    url: str
    default: bool = False
    tag_ttl: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _table(lines: list[str], header: str, values: Mapping[str, object]) -> None:
    lines.append(header)
    for key, value in values.items():
        if value is not None:
            lines.append(f"{key} = {toml_literal(value)}")
    lines.append("")


def config_text(
    *,
    port: int,
    cache_dir: str,
    upstreams: Sequence[Upstream],
    tag_ttl: str | None = "5m",
    max_size: str | None = None,
    cache_extra: Mapping[str, object] | None = None,
    server_extra: Mapping[str, object] | None = None,
    extra_tables: Mapping[str, Mapping[str, object]] | None = None,
    rules: Sequence[Mapping[str, object]] = (),
) -> str:
    """
    The daemon's TOML configuration (see C{ocicache/_config.py}).
    C{extra_tables} adds whole tables, e.g. C{{"metrics": {"listen": ...}}};
    C{rules} one C{[[rule]]} each.
    """
    lines: list[str] = []
    _table(lines, "[server]", {"listen": [f"tcp:{port}:interface=127.0.0.1"], **(server_extra or {})})
    _table(
        lines,
        "[cache]",
        {"dir": cache_dir, "tag_ttl": tag_ttl, "max_size": max_size, **(cache_extra or {})},
    )
    for name, values in (extra_tables or {}).items():
        _table(lines, f"[{name}]", values)
    for upstream in upstreams:
        _table(
            lines,
            "[[upstream]]",
            {
                "name": upstream.name,
                "url": upstream.url,
                "default": upstream.default or None,
                "tag_ttl": upstream.tag_ttl,
                **upstream.extra,
            },
        )
    for rule in rules:
        _table(lines, "[[rule]]", rule)
    return "\n".join(lines)


def write_config(path: str, **kwargs: object) -> str:
    """
    Write L{config_text}C{(**kwargs)} to C{path}; returns C{path}.
    """
    text = config_text(**kwargs)  # type: ignore[arg-type]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def twistd_command(config_path: str, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-c", TWISTD, "-n", "--pidfile=", "ocicache", "--config", config_path]


def daemon_env(repo_root: str | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    repo_root = repo_root or daemon_root()
    env = dict(os.environ if base is None else base)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = repo_root + (os.pathsep + existing if existing else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Daemon:
    """
    One ocicache daemon process.  C{port} must be the one the config
    listens on (L{write_config} with the same port).
    """

    def __init__(
        self,
        config_path: str,
        port: int,
        workdir: str,
        repo_root: str | None = None,
        env: Mapping[str, str] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        try:
            with open(config_path, "rb") as f:
                document = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            document = {}
        if cache_dir is None:
            cache_dir = str(document.get("cache", {}).get("dir", ""))
        self.cache_dir: str = cache_dir
        self.ready_statuses = (200, 401) if "auth" in document else (200,)
        """What C{GET /v2/} answers once it serves: 401 when [auth] wants credentials."""
        """The config's C{cache.dir} ("" if it has none)."""
        self.config_path = os.path.abspath(config_path)
        self.port = port
        self.workdir = os.path.abspath(workdir)
        self.repo_root = repo_root or daemon_root()
        self.log_path = os.path.join(self.workdir, "ocicache.log")
        self.env = daemon_env(self.repo_root, env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _port_accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 20.0) -> Daemon:
        os.makedirs(self.workdir, exist_ok=True)
        self.proc = spawn(twistd_command(self.config_path), self.log_path, self.workdir, self.env)
        try:
            deadline = time.monotonic() + timeout
            while not self._port_accepts():
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"ocicache exited with status {self.proc.returncode} before listening on "
                        f"{self.port}\ncommand: {' '.join(twistd_command(self.config_path))}\n"
                        f"--- {self.log_path} ---\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"ocicache did not listen on {self.port} within {timeout}s\n"
                        f"--- {self.log_path} ---\n{self.log_tail()}"
                    )
                time.sleep(0.05)
            wait_for_http(
                self.url + "/v2/",
                timeout=max(1.0, deadline - time.monotonic()),
                expect=self.ready_statuses,
                proc=self.proc,
                log=self.log_path,
                what="ocicache",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10.0) -> int | None:
        if self.proc is not None:
            self.returncode = stop_process(self.proc, grace)
            self.proc = None
        return self.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_daemon(
    workdir: str,
    upstreams: Sequence[Upstream],
    *,
    cache_dir: str | None = None,
    port: int | None = None,
    timeout: float = 20.0,
    repo_root: str | None = None,
    **config: Any,
) -> Daemon:
    """
    Write a config under C{workdir} (cache in C{workdir}/cache unless
    given) and start a daemon on it.
    """
    port = port or free_port()
    cache_dir = cache_dir or os.path.join(workdir, "cache")
    path = write_config(
        os.path.join(workdir, "ocicache.toml"),
        port=port,
        cache_dir=cache_dir,
        upstreams=upstreams,
        **config,
    )
    daemon = Daemon(path, port=port, workdir=workdir, repo_root=repo_root, cache_dir=cache_dir)
    return daemon.start(timeout=timeout)


def start_node(base: Path, name: str, tables: Mapping[str, Mapping[str, object]], tail: str = "") -> Daemon:
    """
    A daemon named C{name} under C{base} with no registry upstream: its
    config's C{tables} (C{[storage]}, C{[fleet]}) and C{tail} (its
    C{[[git]]} or C{[[files]]} tables); its cache in C{base/name/cache}.
    """
    port = free_port()
    text = config_text(port=port, cache_dir=str(base / name / "cache"), upstreams=[], extra_tables=tables)
    path = base / f"{name}.toml"
    path.write_text(text + tail)
    return Daemon(str(path), port=port, workdir=str(base / name / "daemon")).start()


def default_upstreams(url: str) -> list[Upstream]:
    """
    The tests' usual upstreams: C{docker.io} (the default) and C{ghcr.io},
    both at C{url} (the hop).
    """
    return [Upstream("docker.io", url, default=True), Upstream("ghcr.io", url)]


class DaemonPool:
    """
    Starts daemons under C{base_dir} (C{daemon0}, C{daemon1}, ...: config,
    log and, by default, C{cache/} in each) against C{upstreams}, and stops
    them all in L{stop_all}.
    """

    def __init__(self, base_dir: str, upstreams: Sequence[Upstream], repo_root: str | None = None) -> None:
        self.base_dir = os.path.abspath(base_dir)
        self.upstreams = list(upstreams)
        self.repo_root = repo_root
        self.daemons: list[Daemon] = []

    def __call__(
        self,
        *,
        tag_ttl: str | None = "5m",
        max_size: str | None = None,
        upstreams: Sequence[Upstream] | None = None,
        cache_dir: str | None = None,
        timeout: float = 20.0,
        **config: Any,
    ) -> Daemon:
        workdir = os.path.join(self.base_dir, f"daemon{len(self.daemons)}")
        daemon = start_daemon(
            workdir,
            upstreams if upstreams is not None else self.upstreams,
            cache_dir=cache_dir,
            timeout=timeout,
            repo_root=self.repo_root,
            tag_ttl=tag_ttl,
            max_size=max_size,
            **config,
        )
        self.daemons.append(daemon)
        return daemon

    def stop_all(self) -> None:
        errors = []
        for daemon in self.daemons:
            try:
                daemon.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        if errors:
            raise errors[0]
