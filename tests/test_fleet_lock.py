"""
The fill lock and the Redis wrapper against a real C{redis-server}: one
holder at a time, fences that grow, a holding that only renews and
releases itself, and a Redis that is gone answering L{RedisUnavailable}
within the timeout rather than never.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from ocicache._fleet._lock import FillLock, Holder, Lease
from ocicache._fleet._redis import Redis, RedisUnavailable
from ocicache._spec._reference import Digest
from ocitest.redis import RedisServer

pytestmark = pytest.mark.integration

DIGEST = Digest.parse("sha256:" + "ab" * 32)






async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_one_holder_at_a_time_and_fences_grow(redis_server: RedisServer, redis_client: Redis) -> None:
    a = FillLock(redis_client, reactor, "a", ttl=5.0)
    b = FillLock(redis_client, reactor, "b", ttl=5.0)
    first = await a.take(DIGEST)
    assert isinstance(first, Lease)
    held = await b.take(DIGEST)
    assert isinstance(held, Holder) and held.node == "a"
    assert first.value == f"a|{held.fence}"
    await first.release()
    second = await b.take(DIGEST)
    assert isinstance(second, Lease)
    assert int(second.value.split("|")[1]) > held.fence
    await second.release()
    assert redis_server.command("EXISTS", f"fleet:lock:{DIGEST}") == b":0\r\n"


@pytest_twisted.ensureDeferred
async def test_a_stale_holding_neither_renews_nor_releases_a_later_one(
        redis_server: RedisServer, redis_client: Redis,
) -> None:
    a = FillLock(redis_client, reactor, "a", ttl=1.0)
    b = FillLock(redis_client, reactor, "b", ttl=5.0)
    stale = await a.take(DIGEST)
    assert isinstance(stale, Lease)
    stale._renewal.stop()  # a holder that stalled: its lock expires
    await _sleep(1.3)
    later = await b.take(DIGEST)
    assert isinstance(later, Lease)
    await stale._renew()
    assert stale.lost
    await stale.release()
    assert redis_server.command("GET", f"fleet:lock:{DIGEST}") == f"${len(later.value)}\r\n{later.value}\r\n".encode()
    await later.release()


@pytest_twisted.ensureDeferred
async def test_a_holding_is_renewed_past_its_ttl(redis_server: RedisServer, redis_client: Redis) -> None:
    lease = await FillLock(redis_client, reactor, "a", ttl=1.0).take(DIGEST)
    assert isinstance(lease, Lease)
    await _sleep(2.5)
    held = await FillLock(redis_client, reactor, "b", ttl=1.0).take(DIGEST)
    assert isinstance(held, Holder) and held.node == "a"
    await lease.release()


@pytest_twisted.ensureDeferred
async def test_a_stopped_redis_is_unavailable_within_the_timeout(
        redis_server: RedisServer, redis_client: Redis,
) -> None:
    assert await redis_client.command("PING") == "PONG"
    redis_server.stop()
    # Not queued until Redis is back (txredisapi alone would wait forever).
    with pytest.raises(RedisUnavailable) as raised:
        await redis_client.command("GET", "x")
    assert str(redis_server.port) in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_a_password_opens_redis_and_a_wrong_one_is_unavailable(tmp_path: Path) -> None:
    redis_server = RedisServer(str(tmp_path / "redis"), password="right-horse-battery").start()
    right = Redis(reactor, "127.0.0.1", redis_server.port, 0, "right-horse-battery", timeout=1.0)
    wrong = Redis(reactor, "127.0.0.1", redis_server.port, 0, "wrong-staple", timeout=1.0)
    try:
        assert await right.command("SET", "k", "v") == "OK"
        with pytest.raises(RedisUnavailable) as raised:
            await wrong.command("GET", "k")
        assert "wrong-staple" not in str(raised.value)
    finally:
        await right.close()
        await wrong.close()
        redis_server.stop()
