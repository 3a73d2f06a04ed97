"""
Fixtures for the integration tests (see C{tests/ocitest/} for the pieces).

Session-wide, started once:
  - C{ocitest_images}: dict short name -> L{ocitest.images.Image}
    (C{oci}, C{list}, C{index}, C{team}, C{big1}, C{big64}, C{big256})
  - C{upstream}: a seeded C{docker-registry} (L{ocitest.registry.Registry};
    C{upstream.images} is C{ocitest_images})
  - C{hop_server}: the counting hop in front of it (L{ocitest.hop.Hop})
  - C{containerd}: one private containerd (L{ocitest.containerd.Containerd})
  - C{radosgw}: one single-node Ceph with radosgw (L{ocitest.ceph.Radosgw}),
    shared by every S3 test module: each test uses a bucket of its own

Per test:
  - C{hop}: C{hop_server}, reset (no requests recorded, up, no faults)
  - C{daemon_factory(tag_ttl="5m", max_size=None, upstreams=None,
    cache_dir=None, **config) -> Daemon}: a started daemon with a fresh
    cache dir under C{tmp_path}; upstreams default to C{docker.io} (default)
    and C{ghcr.io}, both at the hop
  - C{daemon}: C{daemon_factory()}
  - C{containerd_factory() -> Containerd}: a fresh, started containerd

A missing program (docker-registry, skopeo, containerd, ctr) fails the test
that needs it, with the package to install; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from ocicache._storage._store import Store  # noqa: E402
from ocitest import REPO_ROOT, MissingBinary, require_binary  # noqa: E402
from ocitest.ceph import Radosgw  # noqa: E402
from ocitest.containerd import Containerd  # noqa: E402
from ocitest.daemon import Daemon, DaemonPool, default_upstreams  # noqa: E402
from ocitest.fakes import Reactor  # noqa: E402
from ocitest.hop import Hop  # noqa: E402
from ocitest.images import Image, all_images  # noqa: E402
from ocitest.redis import RedisServer  # noqa: E402
from ocitest.registry import Registry  # noqa: E402


def _require(*names: str) -> None:
    for name in names:
        try:
            require_binary(name)
        except MissingBinary as e:
            pytest.fail(str(e), pytrace=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "the chaos run (python -m pytest -m chaos)")
    group.addoption("--minutes", type=float, default=5.0, help="how long the chaos run lasts (default 5)")
    group.addoption("--chaos-report", default=None, help="write the chaos run's report (JSON) there")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    if report.failed:
        for daemon in getattr(item, "_ocitest_daemons", []):
            report.sections.append((f"ocicache log {daemon.log_path}", daemon.log_tail(80)))
        hop = getattr(item, "_ocitest_hop", None)
        if hop is not None:
            report.sections.append(("hop requests", hop.summary()[-8000:]))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(scope="session")
def ocitest_images() -> dict[str, Image]:
    return all_images()


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory, ocitest_images: dict[str, Image]) -> Iterator[Registry]:
    _require("docker-registry")
    registry = Registry(str(tmp_path_factory.mktemp("upstream")))
    registry.start()
    try:
        registry.seed(ocitest_images)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def hop_server(upstream: Registry) -> Iterator[Hop]:
    hop = Hop(upstream.url).start()
    try:
        yield hop
    finally:
        hop.stop()


@pytest.fixture
def hop(hop_server: Hop, request: pytest.FixtureRequest) -> Iterator[Hop]:
    hop_server.reset()
    request.node._ocitest_hop = hop_server
    yield hop_server
    hop_server.reset()


@pytest.fixture
def daemon_factory(
    tmp_path: os.PathLike[str], hop: Hop, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Daemon]]:
    pool = DaemonPool(str(tmp_path), default_upstreams(hop.url))
    request.node._ocitest_daemons = pool.daemons
    yield pool
    died = [d for d in pool.daemons if d.proc is not None and d.proc.poll() is not None]
    pool.stop_all()
    passed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed
    if passed:
        # Keep logs, drop cached blobs (a big test leaves hundreds of MiB).
        for d in pool.daemons:
            if d.cache_dir and os.path.isdir(d.cache_dir):
                shutil.rmtree(d.cache_dir, ignore_errors=True)
    if died:
        d = died[0]
        assert d.proc is not None  # as the filter above found
        pytest.fail(
            f"ocicache (pid {d.pid}) died during the test with status {d.proc.returncode}\n"
            f"--- {d.log_path} ---\n{d.log_tail()}",
            pytrace=False,
        )


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    _require("containerd", "ctr")
    c = Containerd(str(tmp_path_factory.mktemp("containerd"))).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def containerd_factory(tmp_path: os.PathLike[str]) -> Iterator[Callable[[], Containerd]]:
    _require("containerd", "ctr")
    started: list[Containerd] = []

    def make() -> Containerd:
        c = Containerd(os.path.join(str(tmp_path), f"ctrd{len(started)}"))
        started.append(c)
        return c.start()

    yield make
    for c in started:
        c.stop()


@pytest.fixture(scope="session")
def radosgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radosgw]:
    """
    Started once per session: the OSD takes ports from a shared range, so
    a start that fails (another cluster on the machine holding them) is
    retried after a pause rather than failing every S3 test.
    """
    gateway: Radosgw | None = None
    for attempt in range(3):
        gateway = Radosgw(str(tmp_path_factory.mktemp("ceph")))
        try:
            gateway.start()
            break
        except RuntimeError:
            gateway.wipe()
            if attempt == 2:
                raise
            time.sleep(10)
    assert gateway is not None
    try:
        yield gateway
    finally:
        gateway.wipe()


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on loopback."""
    server = RedisServer(str(tmp_path / "redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    """The daemon's own Redis client (L{ocicache._fleet._redis.Redis}) on C{redis_server}, commands bounded at 1 s."""
    import pytest_twisted
    from twisted.internet import reactor

    from ocicache._fleet._redis import Redis

    client = Redis(reactor, "127.0.0.1", redis_server.port, 0, None, timeout=1.0)
    yield client
    pytest_twisted.blockon(client.close())


@pytest.fixture
def bucket_name(request: pytest.FixtureRequest) -> str:
    """A bucket name of the test's own (S3 bucket naming rules)."""
    return "t-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]


@pytest.fixture(scope="session")
def skopeo() -> str:
    _require("skopeo")
    return require_binary("skopeo")


@pytest.fixture
def clock() -> Reactor:
    """A fake reactor: its clock, and results "from threads" on the next turn (unit tests)."""
    return Reactor()


@pytest.fixture
def store(tmp_path: Any) -> Store:
    """A fresh, prepared store under the test's own directory (unit tests)."""
    prepared = Store(str(tmp_path / "cache"))
    prepared.prepare()
    return prepared
