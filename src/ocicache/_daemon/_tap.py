"""
C{twistd ocicache}: the command-line options and C{makeService}.

Imported by twistd only when the plugin is used, and even then the reactor
is imported inside L{makeService}, never at import time: twistd installs
the reactor it was asked for before calling it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from twisted.application.service import IService
from twisted.python import usage

from .._ops._config import ConfigError, load_config
from .._ops._reactor import the_reactor
from .._version import __version__

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT]..."
    longdesc = (
        "A streaming pull-through cache for OCI registries. With no --config, "
        "it listens on 127.0.0.1:5000 and mirrors Docker Hub and the well-known "
        "public registries."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file (default: the embedded default)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        A Twisted endpoint to serve on, e.g. tcp:5000:interface=127.0.0.1;
        repeatable; replaces the configuration's [server] listen.
        """
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"ocicache {__version__}")
        sys.exit(0)


def _die(message: str) -> None:
    sys.stderr.write(f"ocicache: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def makeService(options: Options) -> IService:
    from ._listening import ListenError
    from ._main_process import worker_count
    from ._preflight import missing_dependency
    from ._service import OcicacheService
    from ._worker_role import RoleError, WorkerRole, die_with_parent

    try:
        config = load_config(options["config"])
    except ConfigError as e:
        _die(str(e))
    listen = tuple(options["listen"])
    if listen:
        config = _with_listen(config, listen)
    missing = missing_dependency(config)
    if missing is not None:
        _die(missing)
    try:
        role = WorkerRole.from_environment(os.environ)
    except RoleError as e:
        _die(str(e))
    if role is None:
        count = worker_count(config.server.workers)
        if count > 1:
            return _main_process(options, config, count, listen)
    else:
        # No worker outlives the main process holding its listeners.
        die_with_parent()
        if os.getppid() != role.main_pid:
            _die("the main process is gone")
    try:
        service = OcicacheService(config, the_reactor(), role)
    except ListenError as e:
        _die(str(e))
    # SIGHUP reads the same file again, with the same command line applied.
    service.config_path = options["config"]
    if listen:
        service.adjust_config = lambda reloaded: _with_listen(reloaded, listen)
    if config.server.log_format == "json":
        service.log_observer = _json_observer(options)
    service.startup_errors_to_log = not _logs_to_stdout(options)
    service.quiet_second_stop = True
    twistd = getattr(options, "parent", None) or {}
    service.open_before_binding = twistd.get("uid") is None and twistd.get("gid") is None
    # twistd puts it there when it daemonizes, after makeService.
    service.status_pipe = lambda: twistd.get("statusPipe")
    return service


def _main_process(options: Options, config: Any, count: int, listen: tuple[str, ...]) -> IService:
    """
    The main process of C{count} workers (L{ocicache._daemon._main_process}),
    each started as C{twistd -n ocicache} with this command line's config
    and listeners, logging where this process logs.
    """
    from ._main_process import MainProcess

    twistd = getattr(options, "parent", None) or {}
    args = ["--nodaemon", "--pidfile="]
    logfile = twistd.get("logfile")
    if logfile and logfile != "-":
        args.append(f"--logfile={os.path.abspath(logfile)}")
    elif twistd and not twistd.get("nodaemon"):
        # A daemonized twistd logs to twistd.log by default; its standard output is gone.
        args.append(f"--logfile={os.path.abspath('twistd.log')}")
    args.append("ocicache")
    if options["config"] is not None:
        args.append(f"--config={os.path.abspath(options['config'])}")
    args.extend(f"--listen={endpoint}" for endpoint in listen)
    main = MainProcess(config, the_reactor(), count, args, _die_reason)
    if config.server.log_format == "json":
        main.log_observer = _json_observer(options)
    return main


def _die_reason(message: str) -> NoReturn:
    _die(message)
    raise AssertionError("unreachable")


def _logs_to_stdout(options: Options) -> bool:
    """
    Whether twistd's log is standard output (C{-n} without C{--logfile},
    C{--syslog} or C{--logger}): under systemd both it and standard error
    go to the journal, so a start-up failure is said on stderr only.
    """
    twistd = getattr(options, "parent", None) or {}
    if not twistd:
        return False
    return bool(twistd.get("nodaemon")) and (twistd.get("logfile") or "-") == "-" and not (
        twistd.get("logger") or twistd.get("syslog")
    )


def _json_observer(options: Options) -> Any:
    """
    The JSON observer for C{log_format = "json"}, writing where twistd's
    text log would have gone: C{--logfile}, else standard output with
    C{-n}, else C{twistd.log}.  C{None} when twistd was told to log
    elsewhere (C{--logger}, C{--syslog}), which then wins.
    """
    from .._ops._logging import json_observer_for

    twistd = getattr(options, "parent", None) or {}
    if twistd.get("logger") or twistd.get("syslog"):
        return None
    logfile = twistd.get("logfile") or None
    if logfile is None and twistd and not twistd.get("nodaemon"):
        logfile = "twistd.log"
    return json_observer_for(logfile)


def _with_listen(config: Any, listen: tuple[str, ...]) -> Any:
    from attrs import evolve

    return evolve(config, server=evolve(config.server, listen=listen))
