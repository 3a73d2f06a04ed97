"""
Tests for L{ocicache._upstream._refusals}: refusals of credentials
remembered with a growing, capped backoff.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from ocicache._upstream._refusals import FIRST_BACKOFF, LONGEST_BACKOFF, Refusals


def test_unknown_keys_may_be_tried() -> None:
    assert Refusals(Clock()).refused_for("key") == 0


def test_a_refusal_lasts_its_backoff() -> None:
    clock = Clock()
    refusals = Refusals(clock)
    assert refusals.refuse("key") == FIRST_BACKOFF
    assert refusals.refused_for("key") == FIRST_BACKOFF
    assert refusals.refused_for("other") == 0
    clock.advance(FIRST_BACKOFF - 1)
    assert refusals.refused_for("key") == 1
    clock.advance(1)
    assert refusals.refused_for("key") == 0


def test_each_refusal_doubles_the_backoff_up_to_the_longest() -> None:
    clock = Clock()
    refusals = Refusals(clock)
    backoffs = []
    for _ in range(10):
        backoffs.append(refusals.refuse("key"))
        clock.advance(refusals.refused_for("key"))
    assert backoffs[:3] == [FIRST_BACKOFF, 2 * FIRST_BACKOFF, 4 * FIRST_BACKOFF]
    assert backoffs[-1] == LONGEST_BACKOFF
    assert all(b <= LONGEST_BACKOFF for b in backoffs)


def test_an_acceptance_starts_afresh() -> None:
    clock = Clock()
    refusals = Refusals(clock)
    refusals.refuse("key")
    refusals.refuse("key")
    refusals.accept("key")
    assert refusals.refused_for("key") == 0
    assert refusals.refuse("key") == FIRST_BACKOFF


def test_bounded_the_oldest_dropped_first() -> None:
    refusals = Refusals(Clock(), max_entries=2)
    for key in ("a", "b", "c"):
        refusals.refuse(key)
    assert refusals.refused_for("a") == 0
    assert refusals.refused_for("b") > 0 and refusals.refused_for("c") > 0
