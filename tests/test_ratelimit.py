"""
Docker Hub's rate-limit headers and Retry-After (L{ocicache._upstream._ratelimit}),
what the upstream client does with them (gauges, no request while limited,
the tag TTL stretched below the quota floor), and the per-upstream counts
the metadata database keeps for C{ocicache stats}.
"""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path

import pytest
import pytest_twisted
from hyperlink import DecodedURL
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from ocicache._ops._config import UpstreamConfig
from ocicache._ops._metrics import Metrics
from ocicache._storage._metadata import Metadata, QuotaRow
from ocicache._upstream._client import Upstream, make_pool
from ocicache._upstream._errors import UpstreamRateLimited
from ocicache._upstream._ratelimit import (
    DEFAULT_BACKOFF,
    DEFAULT_WINDOW,
    MAX_BACKOFF,
    Quota,
    RateLimit,
    parse_quota_value,
    parse_ratelimit,
    parse_retry_after,
)
from ocicache._upstream._tokens import TokenCache
from ocitest.ops import metric_value

# --- the parser ---------------------------------------------------------------


def test_docker_hub_headers() -> None:
    assert parse_ratelimit(b"100;w=21600", b"76;w=21600", b"192.0.2.1") == RateLimit(100, 76, 21600.0, "192.0.2.1")


def test_policy_lists_and_missing_windows() -> None:
    assert parse_quota_value(b"100, 100;w=21600") == (100, 21600.0)
    assert parse_quota_value(b"100") == (100, None)
    assert parse_quota_value(b" 7 ; w = 60 ") == (7, 60.0)
    assert parse_ratelimit(None, b"5", None) == RateLimit(None, 5, None, None)
    assert parse_ratelimit(b"200;w=3600", None, None) == RateLimit(200, None, 3600.0, None)


@pytest.mark.parametrize("value", [b"", b"-1", b"x;w=1", b"1;w=", b"1;w=-5", b"1.5", b"\xff", b"9" * 16, b"1,",
                                   "\u0661".encode()])
def test_malformed_quota_values(value: bytes) -> None:
    assert parse_quota_value(value) is None


def test_no_ratelimit_headers() -> None:
    assert parse_ratelimit(None, None, b"192.0.2.1") is None
    assert parse_ratelimit(b"lots", b"some", None) is None


def test_sources_are_bounded_and_printable() -> None:
    assert parse_ratelimit(None, b"1", b"a" * 129) == RateLimit(None, 1, None, None)
    assert parse_ratelimit(None, b"1", b"a\x1bb") == RateLimit(None, 1, None, None)


def test_retry_after_forms() -> None:
    now = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
    assert parse_retry_after(b"120", now) == 120.0
    # RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms.
    assert parse_retry_after(b"Sun, 06 Nov 1994 08:50:37 GMT", now) == 60.0
    assert parse_retry_after(b"Sunday, 06-Nov-94 08:50:37 GMT", now) == 60.0
    assert parse_retry_after(b"Sun Nov  6 08:50:37 1994", now) == 60.0
    assert parse_retry_after(b"Sun, 06 Nov 1994 08:00:00 GMT", now) == 0.0  # past: no wait
    assert parse_retry_after(b"soon", now) is None
    assert parse_retry_after(b"9" * 40, now) == MAX_BACKOFF


@given(st.binary(max_size=80))
def test_quota_values_never_raise(value: bytes) -> None:
    parsed = parse_quota_value(value)
    if parsed is not None:
        quota, window = parsed
        assert 0 <= quota < 10**15
        assert window is None or 0 <= window < 10**15


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(1, 10**9))
def test_quota_values_round_trip(limit: int, remaining: int, window: int) -> None:
    parsed = parse_ratelimit(b"%d;w=%d" % (limit, window), b"%d;w=%d" % (remaining, window), None)
    assert parsed == RateLimit(limit, remaining, float(window), None)


@given(st.binary(max_size=80), st.floats(0, 4e9))
def test_retry_after_never_raises(value: bytes, now: float) -> None:
    wait = parse_retry_after(value, now)
    assert wait is None or wait >= 0


@given(st.integers(0, 10**6), st.floats(0, 2e9))
def test_retry_after_dates(delta: int, now: float) -> None:
    when = int(now) + delta
    wait = parse_retry_after(formatdate(when, usegmt=True).encode(), now)
    assert wait == pytest.approx(max(0.0, when - now))


# --- the state ----------------------------------------------------------------

_PULL_LIMIT = RateLimit(100, 0, 21600.0, "192.0.2.1")


def test_a_pull_limit_without_retry_after_waits_the_window() -> None:
    quota = Quota().observed(RateLimit(100, 0, 600.0, None), 1000.0, refused=True)
    assert quota.pull_limit
    assert quota.limited_for(1000.0) == 600.0
    assert quota.limited_for(1600.0) == 0.0
    # No window named, ever: Docker Hub's.
    assert Quota().observed(RateLimit(None, 0, None, None), 0.0, refused=True).limited_for(0.0) == DEFAULT_WINDOW


def test_another_429_without_retry_after_backs_off_a_little() -> None:
    quota = Quota().observed(None, 1000.0, refused=True)
    assert not quota.pull_limit
    assert quota.limited_for(1000.0) == DEFAULT_BACKOFF


def test_retry_after_wins_and_is_bounded() -> None:
    assert Quota().observed(_PULL_LIMIT, 0.0, refused=True, retry_after=b"30").limited_for(0.0) == 30.0
    assert Quota().observed(None, 0.0, refused=True, retry_after=b"30").limited_for(0.0) == 30.0
    assert Quota().observed(None, 0.0, refused=True, retry_after=b"99999999").limited_for(0.0) == MAX_BACKOFF


def test_headers_are_kept_across_responses_without_them() -> None:
    quota = Quota().observed(RateLimit(100, 76, 21600.0, "192.0.2.1"), 10.0)
    quota = quota.observed(RateLimit(None, 75, None, None), 20.0)
    assert (quota.limit, quota.remaining, quota.window, quota.source, quota.observed_at) == (
        100, 75, 21600.0, "192.0.2.1", 20.0)
    assert quota.observed(None, 30.0) == quota
    assert quota.limited_for(30.0) == 0.0


def test_below_the_floor() -> None:
    quota = Quota().observed(RateLimit(100, 9, 600.0, None), 0.0)
    assert quota.below(10, 0.0) and not quota.below(9, 0.0)
    assert quota.below(0.1, 0.0) and not quota.below(0.05, 0.0)
    # A whole window later, every pull it counted has left the window.
    assert not quota.below(10, 600.0)
    # A fraction of an unknown limit: never below.
    assert not Quota().observed(RateLimit(None, 0, None, None), 0.0).below(0.1, 0.0)


# --- the client ---------------------------------------------------------------


class _Response:
    def __init__(self, code: int, headers: dict[bytes, list[bytes]]) -> None:
        self.code = code
        self.headers = Headers(headers)


def _upstream(clock: MemoryReactorClock, metrics: Metrics, **config: object) -> Upstream:
    upstream_config = UpstreamConfig("docker.io", DecodedURL.from_text("https://registry-1.docker.io"),
                                     **config)  # type: ignore[arg-type]
    return Upstream(upstream_config, clock, make_pool(clock), TokenCache(clock), metrics=metrics)


def test_no_request_while_limited() -> None:
    clock = MemoryReactorClock()
    metrics = Metrics()
    upstream = _upstream(clock, metrics)
    upstream.note_quota(_Response(429, {b"ratelimit-limit": [b"100;w=21600"],  # type: ignore[arg-type]
                                        b"ratelimit-remaining": [b"0;w=21600"], b"retry-after": [b"90"]}))
    text = metrics.exposition().decode()
    assert metric_value(text, "ocicache_upstream_ratelimited", upstream="docker.io") == 1
    assert metric_value(text, "ocicache_upstream_ratelimit_limit", upstream="docker.io") == 100
    assert metric_value(text, "ocicache_upstream_ratelimit_remaining", upstream="docker.io") == 0
    clock.advance(30)
    failures: list[Failure] = []
    Deferred.fromCoroutine(upstream.manifest("GET", "library/alpine", "3.20", ["*/*"])).addErrback(failures.append)
    [failure] = failures
    error = failure.value
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == b"60"
    # Nothing was sent: no connection was even attempted.
    assert clock.tcpClients == []
    clock.advance(60)
    assert metric_value(metrics.exposition().decode(), "ocicache_upstream_ratelimited", upstream="docker.io") == 0


def test_the_tag_ttl_stretches_below_the_floor() -> None:
    clock = MemoryReactorClock()
    upstream = _upstream(clock, Metrics(), quota_floor=10, quota_stretch=3600.0)
    assert upstream.tag_ttl(300.0) == 300.0
    upstream.note_quota(_Response(200, {b"ratelimit-limit": [b"100;w=21600"],  # type: ignore[arg-type]
                                        b"ratelimit-remaining": [b"9;w=21600"]}))
    assert upstream.tag_ttl(300.0) == 3600.0
    upstream.note_quota(_Response(200, {b"ratelimit-remaining": [b"10;w=21600"]}))  # type: ignore[arg-type]
    assert upstream.tag_ttl(300.0) == 300.0


# --- kept for ocicache stats --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pull_counts_add_up_and_rate_limit_values_are_kept(tmp_path: Path) -> None:
    metadata = Metadata(str(tmp_path / "metadata.sqlite"), IReactorThreads(reactor))
    await metadata.open()
    try:
        seen = Quota(100, 76, 21600.0, "192.0.2.1", observed_at=10.0)
        await metadata.add_quota("docker.io", 3, 7, seen)
        # A flush with no new headers keeps the last values; counts add up.
        await metadata.add_quota("docker.io", 1, 2, Quota(limited_until=99.0))
        await metadata.add_quota("ghcr.io", 0, 1, Quota())
        assert await metadata.quota() == [
            QuotaRow("docker.io", 4, 9, 100, 76, 21600.0, "192.0.2.1", 10.0, 99.0),
            QuotaRow("ghcr.io", 0, 1, None, None, None, None, None, None),
        ]
    finally:
        await metadata.close()


def test_the_last_run_state_is_taken_up_unless_newer_is_known() -> None:
    clock = MemoryReactorClock()
    clock.advance(1000)
    upstream = _upstream(clock, Metrics())
    upstream.restore(Quota(100, 0, 21600.0, None, observed_at=900.0, limited_until=1100.0))
    assert upstream.quota.limited_for(clock.seconds()) == 100.0
    fresh = _upstream(clock, Metrics())
    fresh.note_quota(_Response(200, {b"ratelimit-remaining": [b"50;w=21600"]}))  # type: ignore[arg-type]
    fresh.restore(Quota(100, 0, 21600.0, None, observed_at=900.0, limited_until=1100.0))
    assert fresh.quota.remaining == 50 and fresh.quota.limited_for(clock.seconds()) == 0
