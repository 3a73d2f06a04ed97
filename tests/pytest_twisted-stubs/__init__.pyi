"""
Types for the part of pytest-twisted (untyped: no stubs, no py.typed) that
the tests use, so that its decorator keeps the decorated test typed.
"""

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

_F = TypeVar("_F", bound=Callable[..., Coroutine[Any, Any, Any]])

# Marks an async test for the plugin, which runs it on the reactor; the
# function itself is returned unchanged.
def ensureDeferred(f: _F) -> _F: ...

_T = TypeVar("_T")

# Waits, from a fixture, for a Deferred run on the plugin's reactor.
def blockon(d: Deferred[_T]) -> _T: ...
