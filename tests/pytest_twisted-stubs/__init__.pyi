"""
Types for the part of pytest-twisted (untyped: no stubs, no py.typed) that
the tests use, so that its decorator keeps the decorated test typed.
"""

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Coroutine[Any, Any, Any]])

# Marks an async test for the plugin, which runs it on the reactor; the
# function itself is returned unchanged.
def ensureDeferred(f: _F) -> _F: ...
