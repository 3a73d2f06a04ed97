"""
Unit tests of the operations pieces, in-process and quick: the JSON log
format, the log-format switch, the draining Site, upstream metrics, the
manifest tally, the Grafana dashboard, the metrics page and the shipped
client configs.
"""

from __future__ import annotations

import io
import json
import os
import re
import tomllib
from typing import Any

import pytest
from twisted.application.service import Application
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from ocicache._ops._logging import JSONLineObserver, event_as_dict
from ocicache._ops._metrics import ManifestTally, Metrics
from ocicache._web._site import DrainingSite
from ocitest.ops import metric_value

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- JSON logs ------------------------------------------------------------------


def _event(**fields: Any) -> dict[str, Any]:
    event = {"log_time": 1_700_000_000.25, "log_level": LogLevel.info, "log_namespace": "ocicache.access",
             "log_format": "{method} {path} {status}", "log_source": None, "log_logger": object()}
    event.update(fields)
    return event


def test_access_event_as_flat_json() -> None:
    out = event_as_dict(_event(method="GET", path="/v2/x/manifests/y", status=200, bytes=12, duration=0.5,
                               cache_result="hit", upstream="docker.io", config=object()))
    assert out == {
        "time": "2023-11-14T22:13:20.250+00:00", "level": "info", "namespace": "ocicache.access",
        "message": "GET /v2/x/manifests/y 200", "method": "GET", "path": "/v2/x/manifests/y",
        "status": 200, "bytes": 12, "duration": 0.5, "cache_result": "hit", "upstream": "docker.io",
    }


def test_failure_event_carries_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    out = event_as_dict(_event(log_format="it failed", log_failure=failure, log_level=LogLevel.critical))
    assert out["level"] == "critical" and out["error"] == "boom"
    assert "ValueError: boom" in out["traceback"]


def test_observer_writes_one_line_per_event() -> None:
    stream = io.StringIO()
    observer = JSONLineObserver(stream)
    observer(_event(method="GET", path="/a\nb", status=404))
    observer(_event(log_format="plain"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["path"] == "/a\nb"
    assert json.loads(lines[1])["message"] == "plain"


def _write_config(tmp_path: Any, log_format: str) -> str:
    path = os.path.join(str(tmp_path), "ocicache.toml")
    with open(path, "w") as f:
        f.write(f'[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nlog_format = "{log_format}"\n'
                f'[cache]\ndir = "{tmp_path}/cache"\n'
                '[[upstream]]\nname = "docker.io"\nurl = "http://127.0.0.1:1"\ndefault = true\n')
    return path


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_format_switch(tmp_path: Any, log_format: str) -> None:
    """
    log_format = "json" gives twistd's application a JSON observer, which
    twistd then uses instead of its text log; "text" leaves it alone.
    """
    from twisted.scripts._twistd_unix import ServerOptions

    from ocicache._daemon._tap import Options, makeService

    parent = ServerOptions()
    parent.parseOptions(["-n", "--pidfile="])
    options = Options()
    options.parent = parent
    # Seen as twisted's class: mypy's untyped_calls_exclude matches the class
    # a method is looked up on, and Options (ours) is not under twisted.
    parser: usage.Options = options
    parser.parseOptions(["--config", _write_config(tmp_path, log_format)])
    service = makeService(options)
    application = Application("ocicache")
    service.setServiceParent(application)
    observer = application.getComponent(ILogObserver, None)
    if log_format == "json":
        assert isinstance(observer, JSONLineObserver)
    else:
        assert observer is None


# --- the draining Site ----------------------------------------------------------


class _Slow(Resource):
    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)  # twisted's untyped __init__, looked up on twisted's class
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


def _connect(site: DrainingSite) -> tuple[Any, StringTransport]:
    factory: Site = site  # twisted's untyped buildProtocol, looked up on twisted's class
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_drain_waits_for_requests_then_closes() -> None:
    clock = MemoryReactorClock()
    resource = _Slow()
    metrics = Metrics()
    site = DrainingSite(resource, clock, metrics)
    busy, busy_transport = _connect(site)
    idle, idle_transport = _connect(site)
    busy.dataReceived(b"GET /v2/x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert site.connections == 2 and len(resource.requests) == 1

    drained = site.drain(30)
    fired: list[int] = []
    drained.addCallback(fired.append)
    # The idle connection is closed at once; the busy one is not.
    assert idle_transport.disconnecting and not busy_transport.disconnecting
    idle.connectionLost(Failure(ConnectionError()))
    assert fired == []

    request = resource.requests[0]
    request.write(b"hello")
    request.finish()
    assert b"connection: close" in busy_transport.value().lower()
    assert busy_transport.disconnecting  # closed after its response
    busy.connectionLost(Failure(ConnectionError()))
    assert fired == [0]
    assert not clock.getDelayedCalls()


def test_drain_timeout_aborts_what_remains() -> None:
    clock = MemoryReactorClock()
    resource = _Slow()
    site = DrainingSite(resource, clock)
    busy, transport = _connect(site)
    busy.dataReceived(b"GET /v2/x HTTP/1.1\r\nHost: a\r\n\r\n")
    fired: list[int] = []
    site.drain(2).addCallback(fired.append)
    clock.advance(1)
    assert fired == [] and not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting  # StringTransport's abortConnection
    busy.connectionLost(Failure(ConnectionError()))
    assert fired == [1]


def test_requests_outside_v2_are_logged_and_counted() -> None:
    from twisted.web.pages import notFound

    metrics = Metrics()
    site = DrainingSite(notFound(), MemoryReactorClock(), metrics)
    protocol, transport = _connect(site)
    protocol.dataReceived(b"GET /robots.txt HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404")
    text = metrics.exposition().decode()
    assert metric_value(text, "ocicache_http_requests_total", route="other", method="GET", code="404") == 1


# --- upstream metrics -----------------------------------------------------------


class _Response:
    def __init__(self, headers: dict[bytes, list[bytes]], code: int = 200) -> None:
        self.headers = Headers(headers)
        self.code = code


def test_upstream_ratelimit_gauge() -> None:
    from hyperlink import DecodedURL

    from ocicache._ops._config import UpstreamConfig
    from ocicache._upstream._client import Upstream, make_pool
    from ocicache._upstream._tokens import TokenCache

    clock = MemoryReactorClock()
    metrics = Metrics()
    upstream = Upstream(UpstreamConfig("docker.io", DecodedURL.from_text("https://registry-1.docker.io")),
                        clock, make_pool(clock), TokenCache(clock), metrics=metrics)
    upstream.note_quota(_Response({b"ratelimit-remaining": [b"76;w=21600"]}))  # type: ignore[arg-type]
    upstream.note_quota(_Response({}))  # type: ignore[arg-type]
    assert upstream.quota.remaining == 76
    text = metrics.exposition().decode()
    assert metric_value(text, "ocicache_upstream_ratelimit_remaining", upstream="docker.io") == 76
    assert metric_value(text, "ocicache_upstream_ratelimit_window_seconds", upstream="docker.io") == 21600


# --- the manifest tally ---------------------------------------------------------


def test_manifest_tally_counts_each_digest_once() -> None:
    tally = ManifestTally()
    tally.added("sha256:a", 100)
    tally.loaded([("sha256:a", 100), ("sha256:b", 50)])
    tally.added("sha256:b", 50)
    assert (len(tally), tally.size) == (2, 150)
    tally.removed("sha256:a")
    tally.removed("sha256:zzz")
    assert (len(tally), tally.size) == (1, 50)


# --- shipped files --------------------------------------------------------------


def _exposed_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_grafana_dashboard_queries_real_metrics() -> None:
    with open(os.path.join(REPO_ROOT, "etc", "grafana-dashboard.json")) as f:
        dashboard = json.load(f)
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"ocicache_[a-z0-9_]+", expr)}
    assert used <= _exposed_names(), used - _exposed_names()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("hit ratio", "bytes saved", "upstream traffic", "in-flight downloads", "cache size"):
        assert topic in titles, topic
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_series_is_documented() -> None:
    """
    docs/operations/metrics.md names every series ocicache exposes (a
    counter with its C{_total}), and no series it does not.
    """
    exposed = {family.name + ("_total" if family.type == "counter" else "")
               for family in Metrics().registry.collect()}
    with open(os.path.join(REPO_ROOT, "docs", "operations", "metrics.md")) as f:
        documented = set(re.findall(r"ocicache_[a-z0-9_]+", f.read()))
    assert documented == exposed, (sorted(exposed - documented), sorted(documented - exposed))


def test_client_configs_parse() -> None:
    etc = os.path.join(REPO_ROOT, "etc")
    for host, server in (("docker.io", "https://registry-1.docker.io"), ("ghcr.io", "https://ghcr.io"),
                         ("_default", None)):
        with open(os.path.join(etc, "containerd", "certs.d", host, "hosts.toml"), "rb") as f:
            hosts = tomllib.load(f)
        assert hosts.get("server") == server
        assert hosts["host"]["http://127.0.0.1:5000"]["capabilities"] == ["pull", "resolve"]
    with open(os.path.join(etc, "docker", "daemon.json")) as f:
        assert json.load(f) == {"registry-mirrors": ["http://127.0.0.1:5000"]}
    with open(os.path.join(etc, "containers", "registries.conf"), "rb") as f:
        registries = tomllib.load(f)
    assert registries["unqualified-search-registries"] == ["docker.io"]
    for registry in registries["registry"]:
        assert registry["mirror"] == [{"location": f"127.0.0.1:5000/{registry['prefix']}", "insecure": True}]


def test_tls_handshake_on_the_plain_port_is_refused_at_once() -> None:
    """
    Clients that try HTTPS before HTTP (podman, skopeo with insecure =
    true) get an immediate answer instead of a handshake timeout.
    """
    site = DrainingSite(_Slow(), MemoryReactorClock())
    protocol, transport = _connect(site)
    protocol.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    # Like every 400, with a distribution-spec error body.
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["errors"][0]["code"] == "UNSUPPORTED"
    assert transport.disconnecting
    protocol.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")  # ignored
    assert transport.value().count(b"HTTP/") == 1
