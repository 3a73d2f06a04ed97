"""
A response body from a L{Source}, however a front-end found it: by
sendfile(2) where the connection allows it (plain TCP, a known end), else
through Python, paced by the client (L{Streamer}).

A whole stored file that goes through Python anyway is read through
C{verify} when the front-end has one: its bytes at rest are checked on
the way, and the last byte is held back until they match (the scrub
checks what sendfile sends).
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from .._fetch._source import Source, StoredFile
from ._sendfile import SendfileStreamer, can_sendfile
from ._streamer import Streamer, WriteBudget

__all__ = ["BodySender"]


@frozen
class BodySender:
    """
    How one front-end sends bodies: its reactor, the shared write budget,
    whether sendfile is on (C{[server] sendfile}), the stall timeout it
    bounds a sendfile by, and what to count sendfile's bytes with.
    """

    reactor: IReactorTime
    budget: WriteBudget
    sendfile: bool
    stall_timeout: float
    on_sendfile: Callable[[int], None] = lambda count: None

    def send(self, request: Request, source: Source, start: int, end: int | None,
             on_bytes: Callable[[int], None],
             verify: Callable[[StoredFile], Source] | None = None) -> Deferred[int]:
        """
        Send C{[start, end)} of C{source} (C{end} C{None}: until it ends);
        fires with the bytes sent once the response is done.
        """
        if self.sendfile and end is not None and can_sendfile(request, end):
            on_sendfile = self.on_sendfile

            def on_sent(count: int) -> None:
                on_bytes(count)
                on_sendfile(count)

            return SendfileStreamer(request, source, start, end, self.reactor, on_sent, self.stall_timeout).start()
        if verify is not None and isinstance(source, StoredFile) and start == 0 and end == source.available:
            source = verify(source)
        return Streamer(request, source, start, end, self.reactor, on_bytes, self.budget).start()
