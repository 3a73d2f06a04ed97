"""
L{Exchange}: what one request did, filled in as it goes, and the one place
its access event is written and its metrics counted when it ends, for
every front-end (C{/v2/}, C{/token}, C{/git/}, C{/files/}).
"""

from __future__ import annotations

from attrs import Factory, define
from twisted.python.failure import Failure
from twisted.web.server import Request

from .._fetch._result import CacheResult
from .._identity import ANONYMOUS, Identity
from .._ops._clock import Stopwatch
from .._ops._logging import log_access
from .._ops._metrics import Metrics

__all__ = ["Exchange"]


@define
class Exchange:
    """What one request did, for its access event and its metrics."""

    route: str = "other"
    result: CacheResult | str | None = None
    upstream: str | None = None
    bytes: int = 0
    finished: bool = False
    """Whether the response ended, or the client went away."""
    identity: Identity = ANONYMOUS
    """Who the client proved to be; what the policy decides on."""
    took: Stopwatch = Factory(Stopwatch)
    """Since the request reached its resource."""

    def ended(self, outcome: None | Failure, request: Request, metrics: Metrics) -> None:
        """
        The response ended (C{outcome} C{None}) or the client went away (a
        failure, counted as 499): count it and write its access event.
        """
        self.finished = True
        duration = self.took.elapsed()
        method = request.method.decode("ascii", "replace")
        code = request.code if outcome is None else 499
        metrics.request_done(self.route, method, code, duration)
        # A small body is finished (and this called) before the handler
        # records its size; the request itself counted the bytes.
        log_access(method, request.uri.decode("ascii", "replace"), code, max(self.bytes, request.sentLength),
                   duration, None if self.result is None else str(self.result), self.upstream, str(self.identity))
