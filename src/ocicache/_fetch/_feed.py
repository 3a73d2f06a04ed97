"""
The protocol that feeds a response body (the upstream's, the S3 store's,
another node's) into a fill's sink.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .._upstream._body import BodyReceiver
from ._download import Download
from ._passthrough import PassThrough

__all__ = ["IDLE_TIMEOUT", "Feed"]

IDLE_TIMEOUT = 60.0
"""Seconds a body may stay silent before the fill fails."""


class Feed(BodyReceiver):
    """
    Feeds a body into a L{Download} or L{PassThrough}, and fails it when
    the body stops arriving for L{IDLE_TIMEOUT} seconds.
    """

    def __init__(self, sink: Download | PassThrough, reactor: IReactorTime,
                 counted: Callable[[int], None] = lambda count: None) -> None:
        super().__init__(reactor, IDLE_TIMEOUT)
        self._sink = sink
        self._counted = counted

    def started(self) -> None:
        self._sink.attach(self.producer)

    def received(self, data: bytes) -> None:
        self._counted(len(data))
        self._sink.write(data)

    def ended(self) -> None:
        self._sink.finish()

    def failed(self, reason: Failure) -> None:
        self._sink.fail(reason)
