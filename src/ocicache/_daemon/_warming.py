"""
The daemon's warming and pinning: a timer for each C{[[warm]]} entry with
C{every} (the others run once at start), and the pins' tag-following on the
janitor's interval; one log line per reference warmed or pinned.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .._oci._warm import Warmer, WarmReport
from .._ops._config import WarmConfig
from .._ops._metrics import Metrics
from .._spec._reference import parse_image_reference
from .._storage._metadata import Metadata, MetadataUnavailable

__all__ = ["Warming"]

log = Logger()


class Warming(MultiService):
    """
    Runs the C{[[warm]]} entries and follows pinned tags.
    """

    def __init__(self, warmer: Warmer, entries: tuple[WarmConfig, ...], follow_every: float,
                 metadata: Metadata, metrics: Metrics, reactor: IReactorTime) -> None:
        MultiService.__init__(self)
        self.warmer = warmer
        self._entries = entries
        self._metadata = metadata
        self._metrics = metrics
        self._reactor = reactor
        for entry in entries:
            if entry.every is not None:
                TimerService(entry.every, self._warm_soon, entry).setServiceParent(self)
        TimerService(follow_every, self._follow_pins_soon).setServiceParent(self)

    def startService(self) -> None:
        MultiService.startService(self)
        for entry in self._entries:
            if entry.every is None:
                self._reactor.callLater(0, self._warm_soon, entry)

    def _warm_soon(self, entry: WarmConfig) -> Deferred[None]:
        return Deferred.fromCoroutine(self._warm_entry(entry))

    async def _warm_entry(self, entry: WarmConfig) -> None:
        """One run of a C{[[warm]]} entry: each reference warmed (or pinned), one log line each."""
        for text in entry.refs:
            image = parse_image_reference(text)  # validated with the config
            report: WarmReport | None = None
            try:
                upstream, repo = self.warmer.target(image)
                if entry.pin:
                    report = await self.warmer.pin(upstream, repo, image.reference, entry.platforms)
                    self.pins_changed()
                else:
                    report = await self.warmer.warm(upstream, repo, image.reference, entry.platforms)
                error = report.error or ("; ".join(f"{b.digest}: {b.error}" for b in report.failed) or None)
            except Exception as e:
                error = str(e) or type(e).__name__
            self._metrics.warm_runs.labels("ok" if error is None else "failed").inc()
            fetched, fetched_bytes = report.count("fetched") if report is not None else (0, 0)
            cached, cached_bytes = report.count("cached") if report is not None else (0, 0)
            failed = len(report.failed) if report is not None else 0
            line = ("{verb} {ref} ({digest}): fetched {fetched} blobs ({fetched_bytes} B), {cached} already"
                    " cached ({cached_bytes} B), {failed} failed")
            fields = dict(verb="Pinned" if entry.pin else "Warmed", ref=text,
                          digest=report.digest if report is not None else "-", fetched=fetched,
                          fetched_bytes=fetched_bytes, cached=cached, cached_bytes=cached_bytes, failed=failed)
            if error is None:
                log.info(line, **fields)
            else:
                log.warn(line + ": {error}", error=error, **fields)

    def _follow_pins_soon(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._follow_pins())

    async def _follow_pins(self) -> None:
        try:
            moved = await self.warmer.follow_pins()
        except Exception:
            log.failure("Following pinned tags failed")
            return
        if moved:
            self.pins_changed()
        await self._count_pinned()

    def pins_changed(self) -> None:
        """The pins changed (an entry, the API, a followed tag): count the pinned bytes again."""
        Deferred.fromCoroutine(self._count_pinned()).addErrback(
            lambda failure: log.failure("Could not count pinned bytes", failure))

    async def _count_pinned(self) -> None:
        try:
            pinned = await self._metadata.pinned_blobs()
        except MetadataUnavailable:
            return
        self._metrics.pinned_bytes.set(sum(pinned.values()))
