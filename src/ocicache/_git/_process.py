"""
git subprocesses through Twisted's process API: the reactor never waits
for one.  L{run} collects a small output; L{stream} feeds a large one
(an upload-pack response) into a fill's sink, paused while its readers
fall behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .._fetch._incoming import DownloadError
from .._fetch._passthrough import PassThrough

__all__ = ["Finished", "run", "stream"]

MAX_OUTPUT = 1 << 20
"""Bytes of a collected output (and of any standard error) kept."""


@frozen
class Finished:
    code: int
    out: bytes
    err: bytes


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self._stdin = stdin
        self._out = bytearray()
        self._err = bytearray()
        self.done: Deferred[Finished] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._out += data[:MAX_OUTPUT - len(self._out)]

    def errReceived(self, data: bytes) -> None:
        self._err += data[:MAX_OUTPUT - len(self._err)]

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.done.callback(Finished(code if isinstance(code, int) else -1, bytes(self._out), bytes(self._err)))


async def run(reactor: Any, argv: Sequence[str], env: Mapping[str, str], stdin: bytes = b"",
              path: str | None = None) -> Finished:
    """Run C{argv} to its end; its output up to L{MAX_OUTPUT} bytes each."""
    collect = _Collect(stdin)
    reactor.spawnProcess(collect, argv[0], list(argv), env=dict(env), path=path)
    return await collect.done


@implementer(IPushProducer)
class _Output:
    """The process's standard output, as the sink's producer: paused, resumed, or the process killed."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        try:
            self._transport.signalProcess("KILL")
        except Exception:
            pass  # already gone


class _Stream(ProcessProtocol):
    def __init__(self, sink: PassThrough, stdin: bytes) -> None:
        self._sink = sink
        self._stdin = stdin
        self._err = bytearray()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._sink.attach(_Output(self.transport))
        self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._sink.write(data)

    def errReceived(self, data: bytes) -> None:
        self._err += data[:4096 - len(self._err)]

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self._sink.finish()
        else:
            message = bytes(self._err).decode("utf-8", "replace").strip().splitlines()[-1:] or ["killed"]
            self._sink.fail(Failure(DownloadError(f"git upload-pack failed: {message[0][:200]}")))


def stream(reactor: Any, argv: Sequence[str], env: Mapping[str, str], stdin: bytes, sink: PassThrough) -> None:
    """Run C{argv} with C{stdin}, its standard output going into C{sink}."""
    reactor.spawnProcess(_Stream(sink, stdin), argv[0], list(argv), env=dict(env))
