"""
The operator's listener: C{/metrics} for Prometheus, C{/healthz} (the
process is alive) and C{/readyz} (it can serve: the cache directory is
writable, the metadata database is open, the S3 store (if any) answers,
and it is not draining for a stop).  Every answer is plain text or the Prometheus text format, and
none carries configuration: no upstream URL, username or credential.

A plain Resource around C{generate_latest}: prometheus-client's own
Twisted resource imports the reactor at import time and scrapes in a
thread, neither of which this daemon wants.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .._ops._host_metrics import merge_expositions
from .._ops._metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = ["OperatorResource"]

log = Logger()


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[IRequest], bytes]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._render = render

    def render_GET(self, request: IRequest) -> bytes:
        return self._render(request)

    render_HEAD = render_GET


class _HostScrape(Resource):
    """C{/metrics} of a worker: the host's, merged from every worker's."""

    isLeaf = True

    def __init__(self, operator: OperatorResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._operator = operator

    def render_GET(self, request: IRequest) -> object:
        scraping = Deferred.fromCoroutine(self._operator.host_exposition())

        def answer(exposition: bytes) -> None:
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.setHeader(b"content-length", str(len(exposition)).encode("ascii"))
            if request.method != b"HEAD":
                request.write(exposition)
            request.finish()

        def failed(failure: Failure) -> None:
            log.failure("Could not gather the workers' metrics", failure)
            request.setResponseCode(500)
            request.finish()

        scraping.addCallbacks(answer, failed)
        return NOT_DONE_YET

    render_HEAD = render_GET


class OperatorResource(Resource):
    def __init__(self, metrics: Metrics, cache_dir: str, db_open: Callable[[], bool],
                 before_scrape: Callable[[], None] = lambda: None,
                 draining: Callable[[], bool] = lambda: False,
                 problems: Callable[[], list[str]] = list,
                 siblings: Callable[[], Awaitable[list[bytes]]] | None = None) -> None:
        """
        @param problems: what else keeps it from serving from its store
            (the S3 store unreachable), one line each.
        @param siblings: with worker processes, the other workers'
            expositions: C{/metrics} answers for the host, merged
            (L{ocicache._ops._host_metrics}).
        """
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._metrics = metrics
        self._cache_dir = cache_dir
        self._db_open = db_open
        self._before_scrape = before_scrape
        self._draining = draining
        self._problems = problems
        self._siblings = siblings
        self.putChild(b"metrics", _Leaf(self._scrape) if siblings is None else _HostScrape(self))
        self.putChild(b"healthz", _Leaf(self._healthz))
        self.putChild(b"readyz", _Leaf(self._readyz))

    def _scrape(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.own_exposition()

    def own_exposition(self) -> bytes:
        """This process's metrics, its cache gauges refreshed first."""
        self._before_scrape()
        return self._metrics.exposition()

    async def host_exposition(self) -> bytes:
        """This process's metrics merged with its siblings'."""
        assert self._siblings is not None
        own = self.own_exposition()
        return merge_expositions([own, *await self._siblings()])

    def _healthz(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"

    def _readyz(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        problems = []
        if self._draining():
            problems.append(b"draining: ocicache is stopping")
        if not os.access(os.path.join(self._cache_dir, "tmp"), os.W_OK):
            problems.append(b"cache directory is not writable")
        if not self._db_open():
            problems.append(b"metadata database is not open")
        problems.extend(problem.encode("utf-8", "replace") for problem in self._problems())
        if problems:
            request.setResponseCode(503)
            return b"\n".join(problems) + b"\n"
        return b"ready\n"
