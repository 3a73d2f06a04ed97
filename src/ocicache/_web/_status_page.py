"""
The status page: server-rendered HTML at the operator listener's C{/},
read-only, with no build step and no external asset (its style is
inline, it refreshes itself every 5 seconds with a C{meta} refresh).

It shows the hit ratio, the bytes served and saved, the downloads in
flight with their progress, each upstream's circuit and Docker Hub
quota, the pins, the largest repositories, and the last warnings and
errors the daemon logged.  Everything on it is escaped (a repository
name is a client's text); nothing on it is configuration (no URL, no
credential).
"""

from __future__ import annotations

import collections
import datetime
import html
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attrs import frozen
from prometheus_client.metrics import MetricWrapperBase
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from .._fetch._download import Download
from .._ops._metrics import Metrics
from .._storage._catalog import repositories
from .._storage._metadata import Metadata
from .._upstream._client import Upstream

__all__ = ["RecentProblems", "StatusPage", "StatusSources"]

KEPT_PROBLEMS = 20
LARGEST = 10


@implementer(ILogObserver)
class RecentProblems:
    """The last warnings and errors logged, for the page: a log observer."""

    def __init__(self, keep: int = KEPT_PROBLEMS) -> None:
        self._kept: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=keep)

    def __call__(self, event: Mapping[str, Any]) -> None:
        level = event.get("log_level")
        if level in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            text = formatEvent(dict(event)).splitlines()[0] if event.get("log_format") else ""
            self._kept.append((float(event.get("log_time", 0.0)), level.name, text[:400]))

    def start(self) -> None:
        globalLogPublisher.addObserver(self)

    def stop(self) -> None:
        globalLogPublisher.removeObserver(self)

    def recent(self) -> list[tuple[float, str, str]]:
        return list(reversed(self._kept))


@frozen
class StatusSources:
    metrics: Metrics
    metadata: Metadata
    upstreams: Mapping[str, Upstream]
    inflight: Callable[[], Mapping[Any, Download]]
    problems: RecentProblems
    reactor: IReactorTime


def _total(metric: MetricWrapperBase, **labels: str) -> float:
    """The sum of a metric's C{_total} (or plain) samples whose labels include C{labels}."""
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(("_created",)):
                continue
            if all(sample.labels.get(key) == value for key, value in labels.items()):
                total += sample.value
    return total


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("not reached")


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="none">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.figures { display: flex; gap: 1em; flex-wrap: wrap; }
.figure { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 10em; }
.figure b { display: block; font-size: 1.5em; }
table { border-collapse: collapse; background: #fff; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #eee; text-align: left; } td.num { text-align: right; }
progress { width: 12em; } .none { color: #777; }
.closed { color: #137333; } .open, .half-open, .offline { color: #b3261e; font-weight: bold; }
code { font-size: .9em; }
"""


class StatusPage(Resource):
    isLeaf = True

    def __init__(self, sources: StatusSources) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._sources = sources

    def render_GET(self, request: Request) -> int:
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda result: gone.append(True))
        rendering = Deferred.fromCoroutine(self._page())

        def send(page: str) -> None:
            if gone:
                return
            data = page.encode("utf-8")
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"content-length", b"%d" % len(data))
            request.write(data)
            request.finish()

        def failed(failure: Failure) -> None:
            if gone:
                return
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(f"status unavailable: {failure.getErrorMessage()[:200]}\n".encode())
            request.finish()

        rendering.addCallbacks(send, failed)
        return NOT_DONE_YET

    async def _page(self) -> str:
        sources = self._sources
        metrics = sources.metrics
        hits = sum(_total(metrics.cache_requests, result=result) for result in ("hit", "coalesced", "stale"))
        lookups = hits + _total(metrics.cache_requests, result="miss")
        ratio = f"{100 * hits / lookups:.1f}%" if lookups else "-"
        served = _total(metrics.bytes_served)
        saved = _total(metrics.bytes_served, source="cache")
        figures = [("hit ratio", ratio, f"{int(hits)} of {int(lookups)} lookups"),
                   ("bytes served", _bytes(served), "to clients"),
                   ("bytes saved", _bytes(saved), "served without the upstream"),
                   ("downloads", str(len(sources.inflight())), "in flight")]
        repos = await sources.metadata.read(repositories)
        pins = await sources.metadata.pins()
        now = sources.reactor.seconds()
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">',
            f"<title>ocicache status</title><style>{_STYLE}</style></head><body>",
            f"<h1>ocicache</h1><p>{html.escape(_when(now))}</p>",
            '<div class="figures">' + "".join(
                f'<div class="figure" id="{html.escape(name.replace(" ", "-"))}">{html.escape(name)}'
                f"<b>{html.escape(value)}</b>{html.escape(note)}</div>" for name, value, note in figures) + "</div>",
            "<h2>Downloads in flight</h2>",
            _table(("blob", "progress", "received", "size"), self._downloads(), "none"),
            "<h2>Upstreams</h2>",
            _table(("upstream", "circuit", "failures in a row", "last failure", "quota"), self._upstreams(now),
                   "none"),
            "<h2>Pins</h2>",
            _table(("image", "digest", "size", "pinned"), (
                (html.escape(f"{pin.upstream}/{pin.repo}{'@' if ':' in pin.reference else ':'}{pin.reference}"),
                 f"<code>{html.escape(pin.digest)}</code>", _bytes(pin.size), html.escape(_when(pin.pinned_at)))
                for pin in pins), "no pins"),
            "<h2>Largest repositories</h2>",
            _table(("repository", "blobs", "size", "tags", "last used"), (
                (html.escape(row["repository"]), str(row["blobs"]), _bytes(row["bytes"]), str(row["tags"]),
                 html.escape(_when(row["last_used"]))) for row in repos[:LARGEST]), "nothing cached yet"),
            "<h2>Last warnings and errors</h2>",
            _table(("when", "level", "what"), (
                (html.escape(_when(at)), html.escape(level), html.escape(text))
                for at, level, text in sources.problems.recent()), "none"),
            "</body></html>",
        ]
        return "\n".join(parts)

    def _downloads(self) -> Iterable[tuple[str, ...]]:
        for key, download in sorted(self._sources.inflight().items(), key=lambda item: str(item[0])):
            size = download.size
            received = download.available
            bar = (f'<progress max="{size}" value="{received}"></progress> {100 * received / size:.0f}%'
                   if size else "?")
            yield (f"<code>{html.escape(str(key))}</code>", bar, _bytes(received),
                   _bytes(size) if size is not None else "?")

    def _upstreams(self, now: float) -> Iterable[tuple[str, ...]]:
        for name, upstream in sorted(self._sources.upstreams.items()):
            circuit = upstream.circuit
            state = circuit.state.value
            if circuit.open_for() > 0:
                state += f" ({circuit.open_for():.0f}s)"
            quota = upstream.quota
            if quota.limit is not None or quota.remaining is not None:
                shown = f"{quota.remaining if quota.remaining is not None else '?'} of {quota.limit or '?'} pulls"
            else:
                shown = "-"
            if quota.limited_for(now) > 0:
                shown += f", limited for {quota.limited_for(now):.0f}s"
            yield (html.escape(name), f'<span class="{html.escape(circuit.state.value)}">{html.escape(state)}</span>',
                   str(circuit.failures), html.escape(circuit.last_failure or "-"), html.escape(shown))
