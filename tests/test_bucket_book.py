"""
The fleet's book of the bucket (L{ocicache._fleet._bucket_book}) against a
real C{redis-server}: reads from every node kept at their latest, one
evictor's turn at a time with growing fences, removals the other nodes
read once (objects completed, too), and with Redis gone, no answer at once rather than a wait.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from ocicache._fleet._bucket_book import ACCESS, EVICTOR, KEEP, KEEP_TTL, RedisBucketBook
from ocicache._fleet._redis import Redis
from ocitest.redis import RedisServer

pytestmark = pytest.mark.integration

X, Y, Z = ("sha256:" + c * 64 for c in "abc")
NOW = float(int(time.time()))






def _book(redis_client: Redis, node: str, up: bool = True) -> RedisBucketBook:
    return RedisBucketBook(redis_client, reactor, node, lambda: up)


@pytest_twisted.ensureDeferred
async def test_reads_of_every_node_are_kept_at_their_latest(redis_client: Redis) -> None:
    a, b = _book(redis_client, "a"), _book(redis_client, "b")
    first = await a.begin({X: NOW})
    assert first is not None
    await first.end()
    # b's batch is older for X (a late pass): X keeps a's read.
    second = await b.begin({X: NOW - 1000, Y: NOW - 500.5})
    assert second is not None
    assert await second.last_access([X, Y, Z]) == {X: NOW, Y: NOW - 500.5}
    await second.end()


@pytest_twisted.ensureDeferred
async def test_one_evictor_at_a_time(redis_server: RedisServer, redis_client: Redis) -> None:
    a, b = _book(redis_client, "a"), _book(redis_client, "b")
    held = await a.begin({})
    other = await b.begin({})
    assert held is not None and other is not None
    assert held.evictor and not other.evictor
    assert await held.holds() and not await other.holds()
    fence = int(redis_server.command("GET", EVICTOR).split(b"|")[1].split(b"\r")[0])
    await other.end()  # not b's: leaves a's turn alone
    assert await held.holds()
    await held.end()
    later = await b.begin({})
    assert later is not None and later.evictor
    assert int(redis_server.command("GET", EVICTOR).split(b"|")[1].split(b"\r")[0]) > fence
    # Taken over after a stall (the turn expired and a took it): b deletes nothing.
    redis_server.command("SET", EVICTOR, "a|999999")
    assert not await later.holds()
    await later.end()
    assert redis_server.command("GET", EVICTOR) == b"$8\r\na|999999\r\n"


@pytest_twisted.ensureDeferred
async def test_removals_are_read_once_by_the_other_nodes(redis_server: RedisServer, redis_client: Redis) -> None:
    a, b = _book(redis_client, "a"), _book(redis_client, "b")
    start = await b.begin({X: NOW, Y: NOW})
    assert start is not None and list(start.gone) == []
    await start.end()
    await a.removed([X, Z])
    seen = await b.begin({})
    assert seen is not None and list(seen.gone) == [X, Z]
    await seen.end()
    own = await a.begin({})
    assert own is not None and list(own.gone) == []  # a knows what it removed
    await own.end()
    again = await b.begin({})
    assert again is not None and list(again.gone) == []
    # A removed object's reads are dropped with it.
    assert await again.last_access([X, Y]) == {Y: NOW}
    await again.end()
    assert redis_server.command("ZCARD", ACCESS) == b":1\r\n"


@pytest_twisted.ensureDeferred
async def test_with_redis_gone_the_book_answers_nothing(redis_server: RedisServer, redis_client: Redis) -> None:
    # The fleet's heartbeat found Redis down: not even asked.
    assert await _book(redis_client, "a", up=False).begin({X: 1.0}) is None
    book = _book(redis_client, "a")
    redis_server.stop()
    # The heartbeat has not noticed yet: the command's timeout bounds it.
    assert await book.begin({X: 1.0}) is None
    await book.removed([X])  # dropped, not raised


@pytest_twisted.ensureDeferred
async def test_the_evictor_trims_reads_older_than_kept(redis_client: Redis) -> None:
    book = _book(redis_client, "a")
    shared = await book.begin({X: 1.0, Y: NOW})
    assert shared is not None and shared.evictor
    await shared.end()
    again = await book.begin({})
    assert again is not None
    assert list(await again.last_access([X, Y]) or {}) == [Y]
    await again.end()


@pytest_twisted.ensureDeferred
async def test_objects_stored_and_removed_are_read_by_the_others_the_later_change_winning(redis_client: Redis) -> None:
    a, b = _book(redis_client, "a"), _book(redis_client, "b")
    start = await b.begin({})
    assert start is not None
    await start.end()
    await a.added(X, 100)
    await a.added(Y, 200)
    await a.removed([X])
    await a.added(Z, 300)
    await a.removed([Z])
    await a.added(Z, 301)  # stored again
    seen = await b.begin({})
    assert seen is not None
    assert (dict(seen.added), list(seen.gone)) == ({Y: 200, Z: 301}, [X])
    await seen.end()
    own = await a.begin({})
    assert own is not None and (dict(own.added), list(own.gone)) == ({}, [])
    await own.end()


@pytest_twisted.ensureDeferred
async def test_every_nodes_protected_blobs_are_kept_each_replaced_whole(
        redis_server: RedisServer, redis_client: Redis,
) -> None:
    a, b = _book(redis_client, "a"), _book(redis_client, "b")
    assert await a.protected() == set()
    for book, keep in ((a, [X, Y]), (b, [Z])):
        shared = await book.begin({}, keep)
        assert shared is not None
        await shared.end()
    assert await b.protected() == {X, Y, Z}
    # a's pins changed: Y unpinned, nothing new.
    shared = await a.begin({}, [X])
    assert shared is not None
    await shared.end()
    assert await b.protected() == {X, Z}
    shared = await a.begin({}, [])
    assert shared is not None
    await shared.end()
    assert await b.protected() == {Z}
    ttl = int(redis_server.command("PTTL", KEEP + "b").strip(b":\r\n"))
    assert 0 < ttl <= KEEP_TTL * 1000
    assert await _book(redis_client, "a", up=False).protected() is None
