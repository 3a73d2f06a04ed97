"""
JSON logs: one flat JSON object per line, for log shippers.

Two ways to get them:

  - C{twistd --logger ocicache.json_observer -n ocicache ...}:
    twistd calls L{json_observer} (a factory) for its log observer; the
    lines go to standard output (the journal, under systemd).
  - C{[server] log_format = "json"} in the configuration: the service
    installs the same observer before twistd starts logging, writing to
    standard output or to twistd's C{--logfile}.  An explicit C{--logger}
    wins over it.

Each line has C{time} (ISO 8601, UTC), C{level}, C{namespace}, C{message}
(the event formatted as the text log shows it), then the event's own
fields, e.g. for an C{ocicache.access} event C{method}, C{path}, C{status},
C{bytes}, C{duration}, C{cache_result}, C{upstream} and C{identity}.  Only fields that
are JSON scalars are copied: objects are left to C{message}, so no
C{repr()} of a configuration object can slip into a line.  A logged
failure adds C{error} (its message) and C{traceback}.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["JSONLineObserver", "event_as_dict", "json_observer", "json_observer_for", "log_access", "log_as_worker"]

_access = Logger(namespace="ocicache.access")


_worker: list[int] = []
"""This process's worker index, once L{log_as_worker} said it."""


def log_as_worker(index: int) -> None:
    """
    Every access event of this process names worker C{index} (with
    C{[server] workers} > 1): a field of the JSON line, C{w<index>} at the
    end of the text one.
    """
    _worker[:] = [index]


def log_access(
    method: str, path: str, status: int, sent: int, duration: float,
    cache_result: str | None = None, upstream: str | None = None, identity: str = "-",
) -> None:
    """
    The one structured access event every request emits.  C{identity} is
    who the client proved to be (C{user:alice}, C{token:ci},
    C{oidc:<sub>}; C{-}: anonymous): a name, never a credential.
    """
    fields: dict[str, object] = {}
    text = "{method} {path} {status} {bytes}B {duration:.3f}s {cache_result} {upstream} {identity}"
    if _worker:
        fields["worker"] = _worker[0]
        text += " w{worker}"
    _access.info(
        text,
        method=method,
        path=path[:1024],
        status=status,
        bytes=sent,
        duration=duration,
        cache_result=cache_result or "-",
        upstream=upstream or "-",
        identity=identity[:256],
        **fields,
    )

# Keys of old-style (twisted.python.log) events that carry no information
# of their own once the event is formatted.
_SKIP = frozenset({"message", "format", "isError", "why", "failure", "time", "system", "printed"})


def event_as_dict(event: LogEvent) -> dict[str, Any]:
    """
    The flat, JSON-ready form of one log event.
    """
    when = event.get("log_time")
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": (
            datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="milliseconds")
            if isinstance(when, (int, float)) else None
        ),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    system = event.get("log_system")
    if isinstance(system, str) and system != "-":
        out["system"] = system
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP or key in out:
            continue
        if value is None or isinstance(value, (str, bool, int, float)):
            out[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        out["error"] = failure.getErrorMessage()
        out["traceback"] = failure.getTraceback()
    return out


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Writes each event as one JSON object on its own line, flushed.
    """

    def __init__(self, stream: IO[str] | LogFile) -> None:
        self._stream = stream

    def __call__(self, event: LogEvent) -> None:
        try:
            line = json.dumps(event_as_dict(event), ensure_ascii=False, default=str)
        except Exception as e:  # never let a bad event kill logging
            line = json.dumps({"level": "error", "namespace": __name__,
                               "message": f"unloggable event: {type(e).__name__}"})
        self._stream.write(line + "\n")
        self._stream.flush()


def json_observer_for(logfile: str | None = None) -> JSONLineObserver:
    """
    A JSON observer writing to C{logfile} (a path, rotated like twistd's
    own log file), or to standard output when C{logfile} is empty, C{None}
    or C{"-"}.

    Standard output is taken now: once logging starts, twistd replaces
    C{sys.stdout} with an object that logs what is written to it.
    """
    if logfile and logfile != "-":
        return JSONLineObserver(LogFile.fromFullPath(logfile))
    return JSONLineObserver(sys.stdout)


def json_observer() -> JSONLineObserver:
    """
    The factory for C{twistd --logger ocicache.json_observer}:
    JSON lines on standard output.
    """
    return json_observer_for(None)
