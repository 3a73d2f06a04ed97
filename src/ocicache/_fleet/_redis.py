"""
The one place that speaks to Redis: a typed wrapper around txredisapi
(which has no annotations), with every command bounded in time.

txredisapi queues a command until its connection is back, however long
Redis is gone; here a command that takes longer than L{COMMAND_TIMEOUT}
fails with L{RedisUnavailable}, so that a node never waits on Redis to
serve a client: it falls back to local singleflight instead.  Once the
connection was up and is lost (Redis stopped: the kernel says so at once),
commands fail at once until it is back, rather than after the timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["COMMAND_TIMEOUT", "Redis", "RedisUnavailable", "text"]

log = Logger()

COMMAND_TIMEOUT = 2.0
"""Seconds a command may take, queued or on the wire, before Redis counts as gone."""

Reply = bytes | str | int | list[Any] | None
"""What a command answers (RESP2: bulk string, integer, array, nil)."""


def text(reply: Reply) -> str | None:
    """A bulk-string reply as text (txredisapi decodes UTF-8 already), or C{None} for nil."""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    if isinstance(reply, (str, int)):
        return str(reply)
    return None


class RedisUnavailable(Exception):
    """Redis did not answer: down, unreachable, or too slow.  The message is safe to log."""


class Redis:
    """
    One lazy, reconnecting connection to a Redis server.
    """

    def __init__(self, reactor: IReactorTime, host: str, port: int, db: int, password: str | None,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        # Imported here, not at the top: txredisapi imports the global
        # reactor, which must not happen before twistd has installed the
        # one it was asked for (the plugin and the tap import this module).
        import txredisapi  # type: ignore[import-untyped]

        self._lost: tuple[type[Exception], ...] = (TimeoutError, txredisapi.ConnectionError)
        self._refused_error: type[Exception] = txredisapi.RedisError
        self._reactor = reactor
        self._timeout = timeout
        self.where = f"{host}:{port}/{db}"
        """Where Redis is, for log lines (never the password)."""
        self._handler = txredisapi.lazyConnection(
            host=host, port=port, dbid=db, password=password, reconnect=True,
            connectTimeout=timeout, replyTimeout=timeout, convertNumbers=False,
        )
        # The lazy handler keeps the Deferred of its first connection, which
        # a refused AUTH fails and nobody else waits on: say it once here
        # rather than as an unhandled error.
        first = getattr(self._handler, "_connected", None)
        if isinstance(first, Deferred):
            first.addErrback(self._refused)
        # Its pool of connections: how many are up (txredisapi's own
        # count), so that a lost one is known without waiting on it.
        self._factory: Any = getattr(self._handler, "_factory", None)
        self._was_up = False

    def _refused(self, failure: Failure) -> None:
        log.warn("Redis at {where} refused this node: {error}", where=self.where, error=failure.getErrorMessage())

    async def command(self, *args: str | int) -> Reply:
        """
        Run one command; raise L{RedisUnavailable} if Redis does not answer
        within the timeout, or refuses it.
        """
        if self._disconnected():
            raise RedisUnavailable(f"Redis at {self.where} is not connected (connection lost)")
        sent: Deferred[Reply] = self._handler.execute_command(*args)
        sent.addTimeout(self._timeout, self._reactor)
        try:
            return await sent
        except self._lost as e:
            raise RedisUnavailable(f"Redis at {self.where} did not answer ({type(e).__name__})") from None
        except self._refused_error as e:
            # Refused (NOAUTH, OOM, ...): for a node, as good as gone.  Redis's
            # error text never holds the password.
            raise RedisUnavailable(f"Redis at {self.where} refused {args[0]}: {e}") from None

    def _disconnected(self) -> bool:
        """
        Whether the connection was up once and is down now: a command would
        only wait in txredisapi's queue for the reconnection.  Before the
        first connection, a command waits for it (within the timeout).
        """
        connections = getattr(self._factory, "size", None)
        if not isinstance(connections, int):
            return False
        if connections > 0:
            self._was_up = True
            return False
        return self._was_up

    async def script(self, source: str, keys: list[str], args: list[str | int]) -> Reply:
        """C{EVAL} a Lua script (run atomically by Redis)."""
        return await self.command("EVAL", source, len(keys), *keys, *args)

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self._handler.disconnect()
        return closed
