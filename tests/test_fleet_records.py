"""
The records of mutable files shared by the fleet (L{ocicache._fleet._records})
against a real C{redis-server}: what one node writes another reads back,
with the TTL the module says; an entry that is not a record reads as
none; and a Redis that is down answers "none" at once and drops writes.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from ocicache._files._key import record_key
from ocicache._files._mutable import Record
from ocicache._fleet._records import RECORD_GRACE, RedisRecords
from ocicache._fleet._redis import Redis
from ocitest.redis import RedisServer

pytestmark = pytest.mark.integration

RECORD = Record("ab" * 32, 1234, 1_700_000_000.5, '"5f-1a"', "Tue, 07 Nov 2023 10:00:00 GMT")


def _key() -> str:
    return f"fleet:file:{record_key('debian', 'dists/stable/InRelease').encoded}"


async def _settle() -> None:
    """Let the writes, which run in the background, reach Redis."""
    await deferLater(reactor, 0.2, lambda: None)


@pytest_twisted.ensureDeferred
async def test_what_one_node_shares_another_reads(redis_server: RedisServer, redis_client: Redis) -> None:
    writer, reader = RedisRecords(redis_client, lambda: True), RedisRecords(redis_client, lambda: True)
    assert await reader.get("debian", "dists/stable/InRelease") is None
    writer.put("debian", "dists/stable/InRelease", RECORD, ttl=300.0)
    await _settle()
    assert await reader.get("debian", "dists/stable/InRelease") == RECORD
    # Per remote and path.
    assert await reader.get("debian", "dists/stable/Release") is None
    assert await reader.get("ubuntu", "dists/stable/InRelease") is None
    ttl = int(redis_server.command("TTL", _key()).strip().lstrip(b":"))
    assert 300 < ttl <= 300 + RECORD_GRACE


@pytest.mark.parametrize("value", [
    "not json", "[]", json.dumps({"encoded": "nothex", "size": 1, "checked": 1.0}),
    json.dumps({"encoded": "ab" * 32, "size": 1}),
    json.dumps({"encoded": "ab" * 32, "size": -1, "checked": 1.0}),
    json.dumps({"encoded": "ab" * 32, "size": "1", "checked": 1.0}),
    '{"encoded": "' + "ab" * 32 + '", "size": 1, "checked": NaN}',
    json.dumps({"encoded": "ab" * 32, "size": 1, "checked": 1.0, "etag": "x\ny"}),
    json.dumps({"encoded": "ab" * 32, "size": 1, "checked": 1.0, "etag": "x" * 300}),
    json.dumps({"encoded": "ab" * 32, "size": 1, "checked": 1.0, "other": 1}),
])
@pytest_twisted.ensureDeferred
async def test_an_entry_that_is_not_a_record_is_none(
        redis_server: RedisServer, redis_client: Redis, value: str) -> None:
    redis_server.command("SET", _key(), value)
    assert await RedisRecords(redis_client, lambda: True).get("debian", "dists/stable/InRelease") is None


@pytest_twisted.ensureDeferred
async def test_while_redis_is_down_nothing_is_asked_nor_written(redis_server: RedisServer,
                                                               redis_client: Redis) -> None:
    down = RedisRecords(redis_client, lambda: False)
    down.put("debian", "dists/stable/InRelease", RECORD, ttl=60.0)
    await _settle()
    assert redis_server.command("DBSIZE") == b":0\r\n"
    RedisRecords(redis_client, lambda: True).put("debian", "dists/stable/InRelease", RECORD, ttl=60.0)
    await _settle()
    assert await down.get("debian", "dists/stable/InRelease") is None
