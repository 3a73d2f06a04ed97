"""
No client waits on a dead Redis (issue 19, item 7): a fleet node whose
real redis-server stops finds the connection refused at once and serves
alone, its clients as fast as before, not after Redis's command timeout.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Blob, Image
from ocitest.redis import RedisServer

pytestmark = pytest.mark.integration

CLIENTS = 8


def _node(daemon_factory: Callable[..., Daemon], redis: RedisServer, tmp_path: Path) -> Daemon:
    secret = tmp_path / "fleet.secret"
    secret.write_text("a-fleet-secret-of-some-length\n")
    port = free_port()
    daemon = daemon_factory(extra_tables={"fleet": {
        "redis": redis.url, "node": "node0", "internal_listen": f"tcp:{port}:interface=127.0.0.1",
        "peer_url": f"http://127.0.0.1:{port}", "secret_file": str(secret),
    }})
    wait_for(lambda: "is in the fleet" in daemon.log_text(), 15, what="the node to join the fleet")
    return daemon


def _round(daemon: Daemon, repo: str, blobs: list[Blob]) -> float:
    """
    Wall time of C{CLIENTS} concurrent cold GETs: blobs never fetched, and
    digests nobody has (each a fill lock, a holders lookup and an upstream
    404 in fleet mode).
    """
    paths = [f"/v2/{repo}/blobs/{blob.digest}" for blob in blobs]
    paths += [f"/v2/{repo}/blobs/sha256:{secrets.token_hex(32)}" for _ in range(CLIENTS - len(paths))]
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(lambda path: http_request(daemon.url + path, timeout=30)[0], paths))
    elapsed = time.monotonic() - started
    assert statuses == [200] * len(blobs) + [404] * (CLIENTS - len(blobs)), statuses
    return elapsed


def test_clients_do_not_wait_on_a_stopped_redis(
    daemon_factory: Callable[..., Daemon], redis_server: RedisServer, hop: Hop, tmp_path: Path,
    ocitest_images: dict[str, Image],
) -> None:
    """
    Rounds of concurrent cold GETs with Redis up, then the first rounds
    after it stopped: those stay within twice the normal time (plus a
    slack for a loaded machine), where waiting on Redis's 2 s command
    timeout takes at least 2 s.
    """
    image = ocitest_images["oci"]
    daemon = _node(daemon_factory, redis_server, tmp_path)
    _round(daemon, image.repo, [])  # the first connections, the upstream's /v2/
    normal = statistics.median(_round(daemon, image.repo, []) for _ in range(5))
    redis_server.stop()
    after = [_round(daemon, image.repo, image.layers[:1]), _round(daemon, image.repo, image.layers[1:2]),
             _round(daemon, image.repo, [])]
    assert max(after) < 2 * normal + 0.5, (after, normal)
    wait_for(lambda: "falling back to local singleflight" in daemon.log_text(), 10, what="the fallback")
    assert "Traceback" not in daemon.log_text()
