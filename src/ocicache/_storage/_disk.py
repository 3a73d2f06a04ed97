"""
The cache on disk, as the services that use it share it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ._metadata import Metadata
from ._store import Store

__all__ = ["Disk"]

T = TypeVar("T")


@frozen
class Disk:
    """
    The files (L{Store}), what is known about them (L{Metadata}), and the
    thread pool that does the blocking file work (fsync, bulk unlinks,
    scans, hashing) so that the reactor never waits on the disk.
    """

    reactor: IReactorTime
    store: Store
    metadata: Metadata
    pool: ThreadPool

    def run(self, work: Callable[..., T], *args: object) -> Deferred[T]:
        """
        Run blocking file work in the disk thread pool.
        """
        # The reactor is every reactor interface at once; this one field is
        # typed for what the services use of it (time).
        threads = cast(IReactorFromThreads, self.reactor)
        return deferToThreadPool(threads, self.pool, work, *args)
