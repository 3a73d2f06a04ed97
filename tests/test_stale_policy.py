"""
Tests for the stale policy: the C{[[upstream]]} keys that set it
(L{ocicache._ops._config}), how upstream failures are classified
(L{ocicache._upstream._errors}), and the one function that decides whether
a tag is served stale (L{ocicache._oci._stale}).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from ocicache._oci._errors import BlobUnknown, ManifestUnknown, RepositoryUnknown
from ocicache._oci._stale import failure_class, serves_stale
from ocicache._ops._config import ConfigError, StalePolicy, parse_config
from ocicache._upstream._errors import (
    Unavailability,
    UpstreamDenied,
    UpstreamRateLimited,
    UpstreamUnavailable,
    unavailability_of,
)

DAY = 86400.0


def _upstream(**keys: Any) -> dict[str, Any]:
    return {"cache": {"dir": "/tmp/x"}, "upstream": [{"name": "docker.io", "url": "https://r.example", **keys}]}


def _policy(**keys: Any) -> StalePolicy:
    return parse_config(_upstream(**keys), {}).upstreams[0].stale


def _error(**keys: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(_upstream(**keys), {})
    return str(raised.value)


# -- the keys


def test_the_defaults_serve_stale_for_all_but_refused_credentials() -> None:
    policy = _policy()
    assert policy == StalePolicy()
    assert policy.stale_on == {"connect", "timeout", "5xx", "protocol", "429"}
    assert policy.max_stale == 30 * DAY
    assert policy.on_404 == "keep"
    # The embedded default upstreams have it too.
    assert all(upstream.stale == StalePolicy() for upstream in parse_config({}, {}).upstreams)


def test_the_keys_are_read() -> None:
    policy = _policy(stale_on=["5xx", "401"], max_stale="2h", on_404="forget")
    assert policy == StalePolicy(frozenset({"5xx", "401"}), 7200.0, "forget")
    assert _policy(stale_on=[]).stale_on == frozenset()


def test_bad_values_name_the_key() -> None:
    assert _error(stale_on=["5xx", "404"]).startswith("upstream[0].stale_on: '404' is not one of connect,")
    assert _error(stale_on="5xx") == "upstream[0].stale_on: expected a list, got str"
    assert _error(max_stale="soon").startswith("upstream[0].max_stale: 'soon' is not a duration")
    assert _error(max_stale="31d") == "upstream[0].max_stale: must be at most 30d (tag rows are kept 30 days)"
    assert _error(on_404="delete") == "upstream[0].on_404: 'delete' must be 'keep' or 'forget'"


def test_negative_ttls() -> None:
    cache = parse_config({}, {}).cache
    assert (cache.negative_ttl, cache.negative_digest_ttl) == (30.0, 5.0)
    cache = parse_config({"cache": {"negative_ttl": "2m", "negative_digest_ttl": 0}}, {}).cache
    assert (cache.negative_ttl, cache.negative_digest_ttl) == (120.0, 0.0)
    with pytest.raises(ConfigError, match=r"^cache\.negative_ttl: must not be negative$"):
        parse_config({"cache": {"negative_ttl": -1}}, {})


# -- classifying failures


def test_failures_without_an_answer_are_classified() -> None:
    assert unavailability_of(ConnectionRefusedError()) == Unavailability.CONNECT
    assert unavailability_of(DNSLookupError("no.such.host")) == Unavailability.CONNECT
    # The endpoint's connect timeout is a ConnectError.
    assert unavailability_of(TimeoutError()) == Unavailability.CONNECT
    # The response timeout cancels the request, while connecting or after.
    assert unavailability_of(ConnectingCancelledError(None)) == Unavailability.TIMEOUT
    assert unavailability_of(CancelledError()) == Unavailability.TIMEOUT
    assert unavailability_of(ResponseNeverReceived([Failure(CancelledError())])) == Unavailability.TIMEOUT
    assert unavailability_of(ResponseFailed([Failure(ValueError("bad chunk"))])) == Unavailability.PROTOCOL
    assert unavailability_of(ValueError()) == Unavailability.PROTOCOL


def test_each_failure_has_its_class() -> None:
    assert failure_class(UpstreamUnavailable("x", Unavailability.CONNECT)) == "connect"
    assert failure_class(UpstreamUnavailable("x", Unavailability.TIMEOUT)) == "timeout"
    assert failure_class(UpstreamUnavailable("x", Unavailability.SERVER)) == "5xx"
    assert failure_class(UpstreamUnavailable("x")) == "protocol"
    assert failure_class(UpstreamRateLimited("x", b"30")) == "429"
    assert failure_class(UpstreamDenied("x", 401)) == "401"
    assert failure_class(UpstreamDenied("x", 403)) == "403"
    assert failure_class(BlobUnknown("x")) is None
    assert failure_class(RuntimeError("a bug")) is None


# -- the decision


@pytest.mark.parametrize("failure", [
    UpstreamUnavailable("x", Unavailability.CONNECT),
    UpstreamUnavailable("x", Unavailability.TIMEOUT),
    UpstreamUnavailable("x", Unavailability.SERVER),
    UpstreamUnavailable("x", Unavailability.PROTOCOL),
    UpstreamRateLimited("x", None),
])
def test_by_default_upstream_failures_serve_stale_within_max_stale(failure: Exception) -> None:
    policy = StalePolicy()
    assert serves_stale(policy, failure, 0.0)
    assert serves_stale(policy, failure, 30 * DAY)
    assert not serves_stale(policy, failure, 30 * DAY + 1)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_serve_stale_only_when_asked(status: int) -> None:
    denied = UpstreamDenied("x", status)
    assert not serves_stale(StalePolicy(), denied, 10.0)
    assert serves_stale(StalePolicy(stale_on=frozenset({str(status)})), denied, 10.0)


def test_only_the_listed_failures_serve_stale() -> None:
    policy = StalePolicy(stale_on=frozenset({"timeout"}))
    assert serves_stale(policy, UpstreamUnavailable("x", Unavailability.TIMEOUT), 1.0)
    assert not serves_stale(policy, UpstreamUnavailable("x", Unavailability.SERVER), 1.0)
    assert not serves_stale(policy, UpstreamRateLimited("x", None), 1.0)
    assert not serves_stale(StalePolicy(stale_on=frozenset()), UpstreamUnavailable("x"), 0.0)


def test_max_stale_zero_serves_nothing_stale() -> None:
    policy = StalePolicy(max_stale=0.0)
    assert not serves_stale(policy, UpstreamUnavailable("x", Unavailability.SERVER), 0.5)


@pytest.mark.parametrize("missing", [ManifestUnknown("gone"), RepositoryUnknown("gone")])
def test_an_upstream_404_keeps_or_forgets(missing: Exception) -> None:
    assert serves_stale(StalePolicy(), missing, 60.0)
    assert not serves_stale(StalePolicy(), missing, 31 * DAY)
    assert not serves_stale(StalePolicy(on_404="forget"), missing, 60.0)


def test_what_is_not_an_upstream_failure_is_never_served_stale() -> None:
    assert not serves_stale(StalePolicy(stale_on=frozenset({"connect", "5xx"})), RuntimeError("a bug"), 0.0)
    assert not serves_stale(StalePolicy(), BlobUnknown("x"), 0.0)
