"""
One upstream's circuit breaker, and its offline switch.

An upstream that refuses or fails every request (a login storm against
a token server that answers 401, a registry down for maintenance) is
asked again by every client request: work for nothing, and on Docker Hub
a path to being banned (Harbor #22569).  After L{THRESHOLD} failures in a
row (401, 403, 429, 5xx, no connection, no answer) the circuit opens:
the upstream is not called for a backoff that doubles from
L{FIRST_BACKOFF} to L{LONGEST_BACKOFF}, and each request meanwhile fails
at once with an error of the last failure's kind, so that the cache
serves what it holds (stale where the upstream's C{stale_on} allows).
When the backoff has passed, one request (the probe) is let through:
its success closes the circuit, its failure opens it again for twice as
long.  The opening and the closing are logged once each.

Offline, the upstream is never called at all, until switched back.
L{ocicache._upstream._refusals} (refused credentials, per key) and
L{ocicache._upstream._ratelimit} (a 429's window) go on working
beneath: the circuit is the upstream-wide bound over all of them.
"""

from __future__ import annotations

import math
from enum import StrEnum

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .._ops._metrics import Metrics
from ._errors import Unavailability, UpstreamDenied, UpstreamError, UpstreamRateLimited, UpstreamUnavailable

__all__ = ["Circuit", "CircuitState", "FIRST_BACKOFF", "LONGEST_BACKOFF", "THRESHOLD", "status_error"]

log = Logger()

THRESHOLD = 5
"""Failures in a row that open the circuit."""
FIRST_BACKOFF = 10.0
"""
The first time the circuit stays open; each failed probe doubles it: an
upstream that refuses everything is asked 5 times, then at 10s, 30s and
70s (8 asks in its first minute and a bit), then every 10 minutes.
"""
LONGEST_BACKOFF = 600.0

_COUNTED = frozenset({Unavailability.CONNECT, Unavailability.TIMEOUT, Unavailability.SERVER})
"""The unavailabilities that are the upstream's trouble (a bad redirect or a cut body is one request's)."""


class CircuitState(StrEnum):
    CLOSED = "closed"
    """Every request goes to the upstream."""
    OPEN = "open"
    """None does, until the backoff has passed."""
    PROBING = "half-open"
    """One request (the probe) is on its way; the rest wait for its verdict by failing at once."""
    OFFLINE = "offline"
    """None does, until the operator says otherwise."""


class Circuit:
    """The circuit of the upstream called C{name}."""

    def __init__(self, name: str, reactor: IReactorTime, metrics: Metrics | None = None,
                 offline: bool = False) -> None:
        self._name = name
        self._reactor = reactor
        self._metrics = metrics
        self._failures = 0
        self._last: UpstreamError | None = None
        self._until = 0.0
        self._backoff = 0.0
        self._probing = False
        self._open = False
        self.offline = offline
        """Never call the upstream (config C{offline}, a SIGHUP, the admin API)."""
        if metrics is not None:
            metrics.circuit_open.labels(name).set_function(lambda: 0 if self.state is CircuitState.CLOSED else 1)

    @property
    def state(self) -> CircuitState:
        if self.offline:
            return CircuitState.OFFLINE
        if not self._open:
            return CircuitState.CLOSED
        if self._probing:
            return CircuitState.PROBING
        return CircuitState.OPEN

    @property
    def failures(self) -> int:
        """Failures in a row so far."""
        return self._failures

    @property
    def last_failure(self) -> str | None:
        """What the last failure said, while the circuit is not closed on a success."""
        return None if self._last is None else str(self._last)

    def open_for(self) -> float:
        """Seconds until the next probe may go (0: closed, or a probe may go now)."""
        if not self._open:
            return 0.0
        return max(0.0, self._until - self._reactor.seconds())

    def admit(self) -> bool:
        """
        Let one exchange with the upstream begin, or raise at once: the
        upstream is offline, or the circuit is open.  C{True} when this
        exchange is the probe: the verdicts while it runs are its own, and
        L{release} gives the probe back when it ends without one.
        """
        if self.offline:
            raise UpstreamUnavailable(
                f"{self._name} is offline: ocicache serves only what its cache holds", Unavailability.CONNECT)
        if not self._open:
            return False
        seconds = self._until - self._reactor.seconds()
        if seconds > 0 or self._probing:
            raise self._refusal(max(seconds, 1.0))
        self._probing = True
        return True

    def release(self, probe: bool) -> None:
        """The exchange L{admit} let begin has ended, with or without a verdict."""
        if probe:
            self._probing = False

    def succeeded(self) -> None:
        """The upstream answered as it should (2xx, 3xx, 404, ...): the circuit closes."""
        if self._open:
            log.info("{upstream}: it answers again; circuit closed after {failures} failures in a row",
                     upstream=self._name, failures=self._failures)
            if self._metrics is not None:
                self._metrics.circuit_changes.labels(self._name, "closed").inc()
        self._failures = 0
        self._last = None
        self._open = False
        self._probing = False
        self._backoff = 0.0

    def reset(self) -> None:
        """Close the circuit without a probe: the operator changed something (a reload)."""
        if self._open:
            log.info("{upstream}: circuit closed by the reload", upstream=self._name)
            if self._metrics is not None:
                self._metrics.circuit_changes.labels(self._name, "closed").inc()
        self._failures = 0
        self._last = None
        self._open = False
        self._probing = False
        self._backoff = 0.0

    def failed(self, error: UpstreamError) -> None:
        """
        The upstream failed a call: refused it (401, 403), limited it
        (429), failed it (5xx), or could not be reached or gave no answer.
        """
        if isinstance(error, UpstreamUnavailable) and error.kind not in _COUNTED:
            return
        self._failures += 1
        self._last = error
        now = self._reactor.seconds()
        if self._open:
            if self._probing:
                # The probe failed: open again, for longer.
                self._probing = False
                self._backoff = min(self._backoff * 2, LONGEST_BACKOFF)
                self._until = now + self._backoff
        elif self._failures >= THRESHOLD:
            self._open = True
            self._backoff = FIRST_BACKOFF
            self._until = now + self._backoff
            log.warn("{upstream}: circuit open after {failures} failures in a row (the last: {error}); not"
                     " calling it for {seconds:.0f}s, then once to see, for twice as long each time that fails",
                     upstream=self._name, failures=self._failures, error=_short(error), seconds=self._backoff)
            if self._metrics is not None:
                self._metrics.circuit_changes.labels(self._name, "opened").inc()

    def _refusal(self, seconds: float) -> UpstreamError:
        """The last failure again, as what this request fails with while the circuit is open."""
        last = self._last
        wait = math.ceil(seconds)
        message = (f"{self._name}: not called for {wait}s after {self._failures} failures in a row"
                   f" (circuit open; the last: {_short(last)})")
        match last:
            case UpstreamDenied(status=status):
                return UpstreamDenied(message, status)
            case UpstreamRateLimited():
                return UpstreamRateLimited(message, b"%d" % wait)
            case UpstreamUnavailable(kind=kind):
                return UpstreamUnavailable(message, kind)
        return UpstreamUnavailable(message, Unavailability.CONNECT)


def status_error(code: int) -> UpstreamError | None:
    """The failure an upstream's final answer C{code} is to the circuit, or C{None} for a good answer."""
    if code in (401, 403):
        return UpstreamDenied(f"the upstream answered {code}", code)
    if code == 429:
        return UpstreamRateLimited("the upstream answered 429", None)
    if 500 <= code < 600:
        return UpstreamUnavailable(f"the upstream answered {code}", Unavailability.SERVER)
    return None


def _short(error: BaseException | None) -> str:
    text = str(error) if error is not None else "?"
    return text if len(text) <= 200 else text[:200] + "..."
