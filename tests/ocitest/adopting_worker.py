"""
A worker for the supervisor's tests (L{ocicache._daemon._supervisor}): it
adopts the listening socket it inherits as descriptor 3, opened by the main
process for C{$WORKER_LISTEN} (L{ocicache._daemon._handover}), and serves
HTTP on it, with just enough to observe from outside:

  - C{GET /pid}: its process id;
  - C{GET /slow}: C{SLOW_BODY}, the second half half a second later;
  - C{SIGHUP}: its pid appended to C{$WORKER_HUP_FILE};
  - C{SIGTERM}: stops accepting, waits for its connections to close, exits 0;

and it says C{ready} on C{$OCICACHE_READY_FD} once it serves.  Run as
C{python adopting_worker.py}.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

SLOW_BODY = b"a" * 1000 + b"b" * 1000

_connections: set[HTTPChannel] = set()
_drained: list[Deferred[None]] = []


class _Channel(HTTPChannel):
    """A connection, counted until it is closed (its bytes all sent)."""

    def connectionMade(self) -> None:
        HTTPChannel.connectionMade(self)
        _connections.add(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        HTTPChannel.connectionLost(self, reason)
        _connections.discard(self)
        if not _connections:
            for waiting in _drained:
                waiting.callback(None)
            _drained.clear()


class _Pid(Resource):
    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)

    def render_GET(self, request: Request) -> bytes:
        return str(os.getpid()).encode()


class _Slow(Resource):
    isLeaf = True

    def __init__(self, clock: IReactorTime) -> None:
        Resource.__init__(self)
        self._clock = clock

    def render_GET(self, request: Request) -> object:
        request.setHeader(b"content-length", str(len(SLOW_BODY)).encode())
        request.setHeader(b"connection", b"close")
        request.write(SLOW_BODY[:1000])

        def rest() -> None:
            request.write(SLOW_BODY[1000:])
            request.finish()

        self._clock.callLater(0.5, rest)
        return NOT_DONE_YET


def _hup(signum: int, frame: FrameType | None) -> None:
    with open(os.environ["WORKER_HUP_FILE"], "a") as f:
        f.write(f"{os.getpid()}\n")


def main() -> None:
    from ocicache._daemon._handover import adopt
    from ocicache._ops._reactor import the_reactor

    reactor = the_reactor()

    root = Resource()
    root.putChild(b"pid", _Pid())
    root.putChild(b"slow", _Slow(reactor))
    site = Site(root)
    site.protocol = _Channel  # type: ignore[assignment]
    # Before the listener is served: a SIGHUP from then on is a reload.
    signal.signal(signal.SIGHUP, _hup)
    port = adopt(reactor, os.environ["WORKER_LISTEN"], 3, site)
    ready = int(os.environ["OCICACHE_READY_FD"])
    os.write(ready, b"ready\n")
    os.close(ready)

    def drain() -> Deferred[None]:
        port.stopListening()
        if not _connections:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        _drained.append(waiting)
        return waiting

    reactor.addSystemEventTrigger("before", "shutdown", drain)
    reactor.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
