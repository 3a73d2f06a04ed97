"""
L{Circuit}: opens after failures in a row, refuses with the last
failure's kind while open, lets one probe through per backoff (which
doubles), closes on a success; offline refuses everything.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from ocicache._ops._metrics import Metrics
from ocicache._upstream._circuit import FIRST_BACKOFF, LONGEST_BACKOFF, THRESHOLD, Circuit, CircuitState, status_error
from ocicache._upstream._errors import (
    Unavailability,
    UpstreamDenied,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)


def _state(circuit: Circuit) -> CircuitState:
    """The state, read afresh (mypy would keep an earlier assertion's narrowing of the property)."""
    return circuit.state


def _fail(circuit: Circuit, error: UpstreamError, times: int = 1) -> None:
    for _ in range(times):
        probe = circuit.admit()
        circuit.failed(error)
        circuit.release(probe)


def test_opens_after_the_threshold_and_refuses_with_the_last_kind() -> None:
    clock = Clock()
    circuit = Circuit("docker.io", clock, Metrics())
    _fail(circuit, UpstreamDenied("refused", 401), THRESHOLD - 1)
    assert circuit.state is CircuitState.CLOSED
    _fail(circuit, UpstreamDenied("refused", 401))
    assert _state(circuit) is CircuitState.OPEN
    assert circuit.open_for() == FIRST_BACKOFF
    with pytest.raises(UpstreamDenied) as caught:
        circuit.admit()
    assert caught.value.status == 401 and "circuit open" in str(caught.value)


@pytest.mark.parametrize(("error", "kind"), [
    (UpstreamRateLimited("429", None), UpstreamRateLimited),
    (UpstreamUnavailable("down", Unavailability.CONNECT), UpstreamUnavailable),
    (UpstreamUnavailable("503", Unavailability.SERVER), UpstreamUnavailable),
])
def test_the_refusal_keeps_the_kind(error: UpstreamError, kind: type[UpstreamError]) -> None:
    circuit = Circuit("q", Clock())
    _fail(circuit, error, THRESHOLD)
    with pytest.raises(kind) as caught:
        circuit.admit()
    if isinstance(error, UpstreamUnavailable):
        assert isinstance(caught.value, UpstreamUnavailable) and caught.value.kind == error.kind
    if isinstance(caught.value, UpstreamRateLimited):
        assert caught.value.retry_after == b"%d" % FIRST_BACKOFF


def test_one_probe_per_backoff_doubling_then_closing() -> None:
    clock = Clock()
    circuit = Circuit("x", clock)
    _fail(circuit, UpstreamUnavailable("503", Unavailability.SERVER), THRESHOLD)
    backoff = FIRST_BACKOFF
    for _ in range(8):
        clock.advance(backoff - 0.5)
        with pytest.raises(UpstreamUnavailable):
            circuit.admit()
        clock.advance(0.5)
        assert circuit.admit() is True
        assert circuit.state is CircuitState.PROBING
        with pytest.raises(UpstreamUnavailable):
            circuit.admit()  # one probe at a time
        circuit.failed(UpstreamUnavailable("503", Unavailability.SERVER))
        circuit.release(True)
        backoff = min(backoff * 2, LONGEST_BACKOFF)
        assert circuit.open_for() == backoff
    clock.advance(backoff)
    probe = circuit.admit()
    circuit.succeeded()
    circuit.release(probe)
    assert _state(circuit) is CircuitState.CLOSED and circuit.admit() is False


def test_a_probe_without_verdict_is_given_back_and_others_do_not_count() -> None:
    clock = Clock()
    circuit = Circuit("x", clock)
    _fail(circuit, UpstreamUnavailable("503", Unavailability.SERVER), THRESHOLD)
    clock.advance(FIRST_BACKOFF)
    circuit.release(circuit.admit())  # the client hung up
    assert circuit.admit() is True
    # A bad redirect is one request's trouble, not the upstream's.
    circuit.failed(UpstreamUnavailable("bad redirect", Unavailability.PROTOCOL))
    assert circuit.state is CircuitState.PROBING


def test_success_resets_the_count_and_offline_refuses_everything() -> None:
    circuit = Circuit("x", Clock())
    _fail(circuit, UpstreamDenied("403", 403), THRESHOLD - 1)
    circuit.succeeded()
    _fail(circuit, UpstreamDenied("403", 403), THRESHOLD - 1)
    assert circuit.state is CircuitState.CLOSED
    circuit.offline = True
    assert _state(circuit) is CircuitState.OFFLINE
    with pytest.raises(UpstreamUnavailable) as caught:
        circuit.admit()
    assert caught.value.kind is Unavailability.CONNECT and "x is offline" in str(caught.value)


def test_status_error() -> None:
    assert status_error(200) is None and status_error(404) is None and status_error(307) is None
    assert isinstance(status_error(401), UpstreamDenied) and isinstance(status_error(403), UpstreamDenied)
    assert isinstance(status_error(429), UpstreamRateLimited)
    server = status_error(502)
    assert isinstance(server, UpstreamUnavailable) and server.kind is Unavailability.SERVER
