"""
The log observer a service gives twistd's application: for C{[server]
log_format = "json"}, in place of the text log.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver
from twisted.python.components import Componentized

__all__ = ["give_log_observer"]


def give_log_observer(parent: Any, observer: ILogObserver | None) -> None:
    """
    twistd's application is a Componentized whose ILogObserver, when set
    before logging starts, replaces the text log (C{--logger}, given
    explicitly, still wins).
    """
    if observer is not None and isinstance(parent, Componentized):
        if parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, observer)
