"""
Talking to the running daemon from a command (C{ocicache warm}, C{pin},
C{admin ...}): where it listens, a keep-alive HTTP client, and how its
answers are said on a terminal.

Blocking HTTP on a few threads: this is a command, not the daemon.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable

__all__ = ["DaemonClient", "Failed", "UsageError", "error_message", "human_size", "listen_url"]

CHUNK = 1 << 20
TIMEOUT = 600.0


class UsageError(Exception):
    """Said on stderr with exit status 2."""


class Failed(Exception):
    """One request could not be done; the message names it."""


def listen_url(description: str, scheme_for_tls: str = "https") -> str:
    """
    A URL for a Twisted endpoint string the daemon listens on
    (C{tcp:5000:interface=127.0.0.1}); a wildcard interface means this
    host's loopback.
    """
    parts = description.replace("\\:", "\0").split(":")
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6", "ssl") or len(parts) < 2:
        raise UsageError(f"cannot reach a {kind!r} listener ({description}); give --url")
    options = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    port = options.get("port", parts[1] if "=" not in parts[1] else "")
    if not port.isdigit():
        raise UsageError(f"no port in {description!r}; give --url")
    host = options.get("interface", "").replace("\0", ":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme_for_tls if kind == 'ssl' else 'http'}://{host}:{port}"


class DaemonClient:
    """One keep-alive connection per thread to the daemon."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self._parts = parts
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            conn = kind(self._parts.hostname or "", self._parts.port, timeout=TIMEOUT)
            self._local.conn = conn
        return conn

    def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                on_chunk: Callable[[int], None] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        """The status, headers and body (not kept when C{on_chunk} counts it)."""
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, target, headers=headers or {})
                response = conn.getresponse()
                if on_chunk is None:
                    return response.status, response.headers, response.read()
                while chunk := response.read(CHUNK):
                    on_chunk(len(chunk))
                if response.length:
                    raise Failed(f"the daemon cut {target} short")
                return response.status, response.headers, b""
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if attempt or on_chunk is not None:
                    raise
            except OSError:
                conn.close()
                self._local.conn = None
                raise
        raise AssertionError("not reached")


def error_message(status: int, body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return f"{status} {errors[0].get('code')}: {errors[0].get('message')}"
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"HTTP {status}"


def human_size(count: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
