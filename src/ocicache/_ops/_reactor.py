"""
The reactor as the daemon uses it: one type for every interface of it that
its parts need (time, threads, TCP, processes, name resolution), as
Twisted itself types its global reactor (C{twisted.internet.reactor}).

Timers take L{IReactorTime} (C{callLater}, C{seconds}); durations are
measured with C{reactor.seconds()} too, so that tests drive both with one
fake clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.internet.interfaces import IReactorCore

__all__ = ["Reactor", "the_reactor"]

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IReactorFDSet,
        IReactorFromThreads,
        IReactorPluggableNameResolver,
        IReactorProcess,
        IReactorSocket,
        IReactorTCP,
        IReactorThreads,
        IReactorTime,
    )

    class Reactor(
        IReactorCore,
        IReactorTime,
        IReactorFDSet,
        IReactorTCP,
        IReactorProcess,
        IReactorSocket,
        IReactorThreads,
        IReactorFromThreads,
        IReactorPluggableNameResolver,
    ):
        """Every part of the reactor the daemon uses (a type only, like Twisted's own)."""

else:
    Reactor = IReactorCore


def the_reactor() -> Reactor:
    """The global reactor, installed by now (twistd or the CLI installed it)."""
    from twisted.internet import reactor

    return cast("Reactor", reactor)
