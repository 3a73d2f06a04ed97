"""
The fleet's shared tags and manifests (L{ocicache._fleet._tags}) against a
real C{redis-server}: what one node writes another reads back byte for
byte, with the TTLs the module says; entries that are not what they should
be read as unknown; and a Redis that is down or gone answers "unknown" at
once and drops writes, never raising into a lookup.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from ocicache._fleet._redis import Redis
from ocicache._fleet._tags import MANIFEST_TTL, TAG_GRACE, TURN_TTL, RedisManifests, manifest_key, tag_key, turn_key
from ocicache._oci._manifests import MAX_MANIFEST_SIZE, SharedTag
from ocicache._spec._reference import Digest
from ocitest.redis import RedisServer

pytestmark = pytest.mark.integration

OCI = "application/vnd.oci.image.manifest.v1+json"
# Not UTF-8: the bytes must come back as they went (txredisapi decodes replies).
BODY = b'{"schemaVersion": 2, "x": "\xff\xfe\x00"}'
DIGEST = Digest("sha256", hashlib.sha256(BODY).hexdigest())






async def _settle() -> None:
    """Let the writes, which run in the background, reach Redis."""
    await deferLater(reactor, 0.2, lambda: None)


def _ttl(redis_server: RedisServer, key: str) -> int:
    return int(redis_server.command("TTL", key).strip().lstrip(b":"))


@pytest_twisted.ensureDeferred
async def test_what_one_node_shares_another_reads(redis_server: RedisServer, redis_client: Redis) -> None:
    writer, reader = RedisManifests(redis_client, lambda: True, "a"), RedisManifests(redis_client, lambda: True, "a")
    assert await reader.tag("docker.io", "library/app", "v1") is None
    assert await reader.manifest(DIGEST) is None
    tag = SharedTag(DIGEST, OCI, 1_700_000_000.25)
    writer.put_tag("docker.io", "library/app", "v1", tag, ttl=300.0)
    writer.put_manifest(DIGEST, OCI, BODY)
    await _settle()
    assert await reader.tag("docker.io", "library/app", "v1") == tag
    assert await reader.manifest(DIGEST) == (OCI, BODY)
    # Per upstream, repository and variant.
    assert await reader.tag("docker.io", "library/app", f"v1 {OCI}") is None
    assert await reader.tag("ghcr.io", "library/app", "v1") is None
    assert 0 < _ttl(redis_server, tag_key("docker.io", "library/app", "v1")) <= 300 + TAG_GRACE
    assert 300 < _ttl(redis_server, tag_key("docker.io", "library/app", "v1"))
    assert MANIFEST_TTL - 5 < _ttl(redis_server, manifest_key(DIGEST)) <= MANIFEST_TTL


@pytest_twisted.ensureDeferred
async def test_one_node_at_a_time_has_its_turn(redis_server: RedisServer, redis_client: Redis) -> None:
    a, b = RedisManifests(redis_client, lambda: True, "a"), RedisManifests(redis_client, lambda: True, "b")
    end = await a.turn("docker.io", "library/app", "v1")
    assert end is not None
    assert await b.turn("docker.io", "library/app", "v1") is None
    assert await a.turn("docker.io", "library/app", "v1") is None  # one per node's flight: not reentrant
    # Per key: another tag, variant or digest is free.
    assert await b.turn("docker.io", "library/app", f"v1 {OCI}") is not None
    assert await b.turn("docker.io", "library/app", str(DIGEST)) is not None
    assert 0 < _ttl(redis_server, turn_key("docker.io", "library/app", "v1")) <= TURN_TTL
    # What is shared before the end lands before it.
    a.put_manifest(DIGEST, OCI, BODY)
    end()
    later = await b.turn("docker.io", "library/app", "v1")
    assert later is not None
    assert await b.manifest(DIGEST) == (OCI, BODY)
    # An old turn's end does not end a later one.
    end()
    await _settle()
    assert await a.turn("docker.io", "library/app", "v1") is None
    later()
    await _settle()
    assert await a.turn("docker.io", "library/app", "v1") is not None


@pytest_twisted.ensureDeferred
async def test_a_manifest_over_the_limit_is_not_shared(redis_server: RedisServer, redis_client: Redis) -> None:
    shared = RedisManifests(redis_client, lambda: True, "a")
    big = b" " * (MAX_MANIFEST_SIZE + 1)
    big_digest = Digest("sha256", hashlib.sha256(big).hexdigest())
    shared.put_manifest(big_digest, OCI, big)
    await _settle()
    assert redis_server.command("EXISTS", manifest_key(big_digest)) == b":0\r\n"


@pytest.mark.parametrize("value", [
    "not json", "[]", '{"digest": "sha256:nothex", "media_type": "x", "checked_at": 1}',
    json.dumps({"digest": str(DIGEST), "media_type": OCI}),
    json.dumps({"digest": str(DIGEST), "media_type": OCI, "checked_at": "NaN"}),
])
@pytest_twisted.ensureDeferred
async def test_a_tag_entry_that_is_not_one_is_unknown(
        redis_server: RedisServer, redis_client: Redis, value: str,
) -> None:
    redis_server.command("SET", tag_key("docker.io", "library/app", "v1"), value)
    assert await RedisManifests(redis_client, lambda: True, "a").tag("docker.io", "library/app", "v1") is None


@pytest.mark.parametrize("value", ["not json", '{"media_type": "x"}', '{"media_type": "x", "body": "!!"}'])
@pytest_twisted.ensureDeferred
async def test_a_manifest_entry_that_is_not_one_is_unknown(
        redis_server: RedisServer, redis_client: Redis, value: str,
) -> None:
    redis_server.command("SET", manifest_key(DIGEST), value)
    assert await RedisManifests(redis_client, lambda: True, "a").manifest(DIGEST) is None


@pytest_twisted.ensureDeferred
async def test_while_redis_is_down_nothing_is_asked_nor_written(redis_server: RedisServer, redis_client: Redis) -> None:
    down = RedisManifests(redis_client, lambda: False, "a")
    down.put_tag("docker.io", "library/app", "v1", SharedTag(DIGEST, OCI, 1.0), ttl=60.0)
    down.put_manifest(DIGEST, OCI, BODY)
    await _settle()
    assert redis_server.command("DBSIZE") == b":0\r\n"
    RedisManifests(redis_client, lambda: True, "a").put_manifest(DIGEST, OCI, BODY)
    await _settle()
    assert await down.manifest(DIGEST) is None
    assert await down.tag("docker.io", "library/app", "v1") is None
    # Alone, every turn is this node's, and ends as nothing.
    end = await down.turn("docker.io", "library/app", "v1")
    assert end is not None and (await down.turn("docker.io", "library/app", "v1")) is not None
    end()
    assert redis_server.command("DBSIZE") == b":1\r\n"


@pytest_twisted.ensureDeferred
async def test_a_redis_that_is_gone_answers_unknown_within_the_timeout(
        redis_server: RedisServer, redis_client: Redis,
) -> None:
    shared = RedisManifests(redis_client, lambda: True, "a")  # the heartbeat has not noticed yet
    shared.put_manifest(DIGEST, OCI, BODY)
    await _settle()
    redis_server.stop()
    started = reactor.seconds()
    assert await shared.tag("docker.io", "library/app", "v1") is None
    assert await shared.manifest(DIGEST) is None
    end = await shared.turn("docker.io", "library/app", "v1")
    assert end is not None
    end()
    assert reactor.seconds() - started < 3 * 1.0 + 1.0
    # Dropped, not raised (an unhandled error would fail the test).
    shared.put_tag("docker.io", "library/app", "v1", SharedTag(DIGEST, OCI, 1.0), ttl=60.0)
    shared.put_manifest(DIGEST, OCI, BODY)
    await deferLater(reactor, 1.5, lambda: None)
