"""
Tests for L{ocicache._fetch._singleflight.SingleFlight}.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure

from ocicache._fetch._singleflight import SingleFlight


class Work:
    """
    Work whose result the test decides: counts its calls, and hands out a
    Deferred per call.
    """

    def __init__(self) -> None:
        self.started: list[Deferred[Any]] = []

    async def __call__(self) -> Any:
        d: Deferred[Any] = Deferred()
        self.started.append(d)
        return await d


def results(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_concurrent_calls_share_one_execution() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    first, joined_first = flight.call("k", work)
    second, joined_second = flight.call("k", work)
    third, joined_third = flight.call("k", work)
    assert (joined_first, joined_second, joined_third) == (False, True, True)
    assert len(work.started) == 1
    assert "k" in flight and len(flight) == 1
    seen = [results(first), results(second), results(third)]
    assert seen == [[], [], []]

    work.started[0].callback("the result")
    assert seen == [["the result"]] * 3
    assert "k" not in flight and len(flight) == 0


def test_each_caller_gets_its_own_deferred() -> None:
    flight: SingleFlight[str, list[int]] = SingleFlight()
    work = Work()
    first, _ = flight.call("k", work)
    second, _ = flight.call("k", work)
    assert first is not second
    # One caller's callbacks do not change what the other sees.
    first.addCallback(lambda value: "changed by the first caller")
    seen = results(second)
    work.started[0].callback([1, 2])
    assert seen == [[1, 2]]


def test_different_keys_run_separately() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    a, joined_a = flight.call("a", work)
    b, joined_b = flight.call("b", work)
    assert (joined_a, joined_b) == (False, False)
    assert len(work.started) == 2
    assert len(flight) == 2
    seen_a, seen_b = results(a), results(b)
    work.started[1].callback("B")
    assert seen_a == [] and seen_b == ["B"]
    assert "a" in flight and "b" not in flight
    work.started[0].callback("A")
    assert seen_a == ["A"]
    assert len(flight) == 0


def test_failure_reaches_every_caller() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    calls = [flight.call("k", work)[0] for _ in range(3)]
    seen = [results(d) for d in calls]
    work.started[0].errback(Failure(ValueError("upstream said no")))
    for each in seen:
        assert len(each) == 1
        assert isinstance(each[0], Failure)
        assert each[0].check(ValueError)
        assert str(each[0].value) == "upstream said no"
    assert len(flight) == 0


def test_a_cancelled_waiter_cancels_neither_the_work_nor_the_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    cancelled: list[bool] = []
    inner: Deferred[str] = Deferred(lambda d: cancelled.append(True))

    async def work() -> str:
        return await inner

    first, _ = flight.call("k", work)
    second, _ = flight.call("k", work)
    third, _ = flight.call("k", work)
    seen_first, seen_second, seen_third = results(first), results(second), results(third)

    second.cancel()
    assert len(seen_second) == 1 and seen_second[0].check(CancelledError)
    assert cancelled == []
    assert "k" in flight

    # Even the one that started the work may leave.
    first.cancel()
    assert len(seen_first) == 1 and seen_first[0].check(CancelledError)
    assert cancelled == []

    inner.callback("done")
    assert seen_third == ["done"]
    # The cancelled ones saw their cancellation only.
    assert len(seen_first) == 1 and len(seen_second) == 1
    assert len(flight) == 0


def test_every_waiter_cancelled_still_lets_the_work_finish() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    first, _ = flight.call("k", work)
    results(first)
    first.cancel()
    assert "k" in flight
    work.started[0].callback("kept")
    assert len(flight) == 0
    # A new call after completion starts new work.
    again, joined = flight.call("k", work)
    assert joined is False
    assert len(work.started) == 2


def test_a_new_call_after_completion_starts_new_work() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    work = Work()
    first, _ = flight.call("k", work)
    work.started[0].callback(1)
    assert results(first) == [1]
    second, joined = flight.call("k", work)
    assert joined is False
    assert len(work.started) == 2
    seen = results(second)
    work.started[1].callback(2)
    assert seen == [2]


def test_a_new_call_after_a_failure_starts_new_work() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    work = Work()
    first, _ = flight.call("k", work)
    results(first)
    work.started[0].errback(Failure(RuntimeError("transient")))
    second, joined = flight.call("k", work)
    assert joined is False
    assert len(work.started) == 2


def test_synchronous_exception_is_delivered_as_a_failure() -> None:
    flight: SingleFlight[str, str] = SingleFlight()

    def work() -> Any:
        raise KeyError("raised before any await")

    d, joined = flight.call("k", work)
    assert joined is False
    seen = results(d)
    assert len(seen) == 1 and isinstance(seen[0], Failure) and seen[0].check(KeyError)
    # Nothing is left in flight: the next call tries again.
    assert len(flight) == 0
    calls: list[int] = []

    async def good() -> str:
        calls.append(1)
        return "fine"

    again, joined = flight.call("k", good)
    assert joined is False and results(again) == ["fine"] and calls == [1]


def test_exception_in_a_coroutine_is_delivered_as_a_failure() -> None:
    flight: SingleFlight[str, str] = SingleFlight()

    async def work() -> str:
        raise LookupError("raised in the coroutine")

    d, _ = flight.call("k", work)
    seen = results(d)
    assert len(seen) == 1 and seen[0].check(LookupError)
    assert len(flight) == 0


def test_work_that_completes_at_once() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    d, joined = flight.call("k", lambda: succeed("immediate"))
    assert joined is False
    assert results(d) == ["immediate"]
    assert len(flight) == 0


def test_a_waiter_callback_calling_again_starts_fresh_work() -> None:
    """
    Callers often retry from their callback: by then the key is free.
    """
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    first, _ = flight.call("k", work)
    retried: list[bool] = []
    first.addCallback(lambda value: retried.append(flight.call("k", work)[1]))
    work.started[0].callback("v")
    assert retried == [False]
    assert len(work.started) == 2
    assert "k" in flight


@pytest.mark.parametrize("count", [2, 50])
def test_many_waiters(count: int) -> None:
    flight: SingleFlight[int, int] = SingleFlight()
    work = Work()
    calls = [flight.call(7, work) for _ in range(count)]
    assert [joined for _, joined in calls] == [False] + [True] * (count - 1)
    seen = [results(d) for d, _ in calls]
    work.started[0].callback(42)
    assert seen == [[42]] * count
    assert len(work.started) == 1
