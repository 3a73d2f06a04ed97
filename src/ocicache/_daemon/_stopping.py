"""
A second C{SIGTERM} or C{SIGINT} while the daemon drains: said in the log,
not acted on again.

Twisted's handlers call C{reactor.stop} on every such signal; once the
shutdown has begun, the second call raises C{ReactorNotRunning}, which
lands in the log as a traceback.  systemd sends C{SIGTERM} once and then
C{SIGKILL} after C{TimeoutStopSec}, but an operator's Ctrl-C or a second
C{kill} is common: the drain goes on, and C{SIGKILL} still stops at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

__all__ = ["hold_stop_signals"]

log = Logger()


def hold_stop_signals(reactor: IReactorFromThreads) -> None:
    """
    From now on, C{SIGTERM} and C{SIGINT} only log that the daemon is
    already stopping.  Only from the main thread (the only one signals
    may be set from).
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def said(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        # In the main thread, between two bytecodes: log from the loop.
        reactor.callFromThread(
            log.info, "Received {signal} while stopping: still draining (SIGKILL stops at once)", signal=name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, said)
