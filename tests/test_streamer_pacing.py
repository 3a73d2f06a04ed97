"""
A Streamer's write size follows its client: 1 MiB writes for a client that
drains fast, down to 64 KiB for a slow one, so slow clients do not each
hold a megabyte in Twisted's user-space buffer.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from ocicache._fetch._source import StoredFile
from ocicache._web._streamer import CHUNK, MIN_CHUNK, Streamer


class _Request:
    """
    Just enough of a twisted.web request: a transport that pauses the
    producer after every write, as a socket buffer above its limit does.
    """

    def __init__(self) -> None:
        self.writes: list[int] = []
        self.producer: Any = None
        self.finished = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def notifyFinish(self) -> Deferred[None]:
        return Deferred()

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.producer.pauseProducing()

    def finish(self) -> None:
        self.finished = True


def _stream(tmp_path: Any, drain_seconds: float, size: int = 8 << 20) -> list[int]:
    path = os.path.join(str(tmp_path), "blob")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    clock = MemoryReactorClock()
    request = _Request()
    fd = os.open(path, os.O_RDONLY)
    streamer = Streamer(request, StoredFile(fd, size), 0, size, clock)  # type: ignore[arg-type]
    streamer.start()
    while not request.finished:
        clock.advance(drain_seconds)  # the client drains the last write
        request.producer.resumeProducing()
        clock.advance(0)  # the pump runs
    assert sum(request.writes) == size
    return request.writes


def test_a_fast_client_gets_large_writes(tmp_path: Any) -> None:
    writes = _stream(tmp_path, drain_seconds=0.001)  # 1 MiB in 1 ms: ~1 GB/s
    assert writes == [CHUNK] * 8


def test_a_slow_client_gets_small_writes(tmp_path: Any) -> None:
    writes = _stream(tmp_path, drain_seconds=0.2, size=2 << 20)  # ~5 MB/s at 1 MiB
    assert writes[0] == CHUNK
    assert max(writes[5:]) == MIN_CHUNK


def test_a_client_that_speeds_up_gets_large_writes_again(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "blob")
    size = 16 << 20
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    clock = MemoryReactorClock()
    request = _Request()
    streamer = Streamer(request, StoredFile(os.open(path, os.O_RDONLY), size), 0, size, clock)  # type: ignore[arg-type]
    streamer.start()
    for drain in [0.2] * 6 + [0.0001] * 8:
        clock.advance(drain)
        request.producer.resumeProducing()
        clock.advance(0)
    assert streamer.chunk == CHUNK
    assert MIN_CHUNK in request.writes


def test_the_write_budget_is_shared_by_all_streams(tmp_path: Any) -> None:
    from ocicache._web._streamer import WriteBudget

    budget = WriteBudget(16 << 20)
    assert budget.share == CHUNK
    budget.streams = 8
    assert budget.share == CHUNK  # a few clients: full-size writes
    budget.streams = 64
    assert budget.share == 256 << 10  # many: 16 MiB between them
    budget.streams = 10_000
    assert budget.share == MIN_CHUNK

    # Streams count themselves in while they run, and out when done.
    path = os.path.join(str(tmp_path), "blob")
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
    budget = WriteBudget(16 << 20)
    clock = MemoryReactorClock()
    request = _Request()
    streamer = Streamer(request, StoredFile(os.open(path, os.O_RDONLY), 1 << 20), 0, 1 << 20,  # type: ignore[arg-type]
                        clock, budget=budget)
    streamer.start()
    assert budget.streams == 1
    while not request.finished:
        request.producer.resumeProducing()
        clock.advance(0)
    assert budget.streams == 0
