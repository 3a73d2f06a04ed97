"""
The admin API's door (loopback, else its bearer token) and the pull log's
files (a line per pull, a file per day, the days past the retention
removed).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from ocicache._storage._pull_log import Pull, PullLog
from ocicache._web._admin import Admin, AdminResource


def _resource(token: str | None) -> AdminResource:
    admin = Admin(metadata=None, purger=None, janitor=None, pulls=None,  # type: ignore[arg-type]
                  upstreams={}, default_upstream=lambda: None, reactor=Clock(), token=lambda: token)
    return AdminResource(admin)


def _get(resource: AdminResource, host: str, authorization: str | None = None) -> tuple[int, Any]:
    request = DummyRequest([b"upstreams"])
    request.client = IPv4Address("TCP", host, 40000)
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization.encode()])
    body = resource.render(request)  # type: ignore[arg-type]
    if body == NOT_DONE_YET:
        return 200, json.loads(b"".join(request.written))
    assert isinstance(body, bytes)
    return request.responseCode or 200, json.loads(body)


def test_loopback_may_and_others_need_the_token() -> None:
    assert _get(_resource(None), "127.0.0.1") == (200, {"upstreams": []})
    status, body = _get(_resource(None), "10.1.2.3", "Bearer anything-at-all-here")
    assert status == 403 and body["errors"][0]["code"] == "DENIED"
    token = "s3cret-admin-token-0123456789"
    status, body = _get(_resource(token), "10.1.2.3")
    assert status == 401 and body["errors"][0]["code"] == "UNAUTHORIZED"
    status, _ = _get(_resource(token), "10.1.2.3", "Bearer wrong-token-0123456789")
    assert status == 401
    assert _get(_resource(token), "10.1.2.3", f"Bearer {token}") == (200, {"upstreams": []})


def _run(work: Any, *args: Any) -> Any:
    return succeed(work(*args))


def test_the_pull_log_keeps_days_and_drops_older_ones(tmp_path: os.PathLike[str]) -> None:
    clock = Clock()
    directory = os.path.join(str(tmp_path), "pulls")
    log = PullLog(directory, 2, clock, _run)
    day = 86400.0
    clock.advance(20000 * day)
    log.record(Pull(clock.seconds() - 3 * day, "old", "docker.io", "library/a", "1", "sha256:" + "a" * 64))
    log.record(Pull(clock.seconds() - 1 * day, "htpasswd:ci", "docker.io", "library/b", "2", "sha256:" + "b" * 64))
    log.flush()
    # Three days back is past the retention: its file is gone on the flush that wrote it.
    assert len(os.listdir(directory)) == 1
    log.record(Pull(clock.seconds(), "127.0.0.1", "ghcr.io", "team/app", "v1", "sha256:" + "c" * 64))
    found: list[list[dict[str, Any]]] = []
    Deferred.fromCoroutine(log.recent(clock.seconds() - 5 * day)).addCallback(found.append)
    (pulls,) = found
    assert [(p["who"], p["repository"], p["reference"]) for p in pulls] == [
        ("htpasswd:ci", "docker.io/library/b", "2"), ("127.0.0.1", "ghcr.io/team/app", "v1")]
