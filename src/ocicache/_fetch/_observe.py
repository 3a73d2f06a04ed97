"""
Watching a Deferred without touching its result.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["observed"]


def observed(watched: Deferred[Any]) -> Deferred[None]:
    """
    A Deferred that fires (never fails) when C{watched} does, leaving
    C{watched}'s own result and callbacks alone.
    """
    seen: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        seen.callback(None)
        return result

    watched.addBoth(fire)
    return seen
