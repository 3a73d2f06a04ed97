"""
C{/files/<remote>/<path>}: the files of package repositories and file
servers (L{ocicache._files}), served as blobs are: C{Range} on stored
files and on files still arriving, C{sendfile} on plain TCP, the last byte
held back until the file is verified.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._fetch._result import CacheResult
from .._ops._config import ServerConfig
from .._ops._metrics import Metrics
from .._spec._conditional import not_modified
from .._spec._errors import ErrorCode, RegistryError
from .._spec._range import Unsatisfiable, if_range_holds, parse_range
from .._version import __version__
from .._web._body import BodySender
from .._web._errors import internal_error, registry_error, render_error
from .._web._exchange import Exchange
from .._web._streamer import WriteBudget, abort_response
from ._errors import BadPath, RemoteUnknown
from ._key import FileKey
from ._paths import FilePath, parse_path
from ._service import FileService

__all__ = ["FilesResource"]

log = Logger()

SERVER = f"ocicache/{__version__}".encode("ascii")


class FilesResource(Resource):
    """Every path below C{/files/}: routed by hand, as the raw path must be checked before it is decoded."""

    isLeaf = True

    def __init__(self, files: FileService, reactor: IReactorTime, metrics: Metrics, server: ServerConfig,
                 authenticate: Callable[[Request], Awaitable[None]], budget: WriteBudget | None = None) -> None:
        """
        @param authenticate: raises what the client must be told when
            it may not use the mirror (the registry's client authentication).
        """
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._files = files
        self._reactor = reactor
        self._metrics = metrics
        self._server = server
        self._authenticate = authenticate
        self._budget = budget if budget is not None else WriteBudget()

    def render(self, request: Request) -> int:
        request.setHeader(b"server", SERVER)
        state = Exchange(route="files")
        request.notifyFinish().addBoth(state.ended, request, self._metrics)
        handling = Deferred.fromCoroutine(self._handle(request, state))
        handling.addErrback(self._failed, request, state)
        return NOT_DONE_YET

    async def _handle(self, request: Request, state: Exchange) -> None:
        if request.method not in (b"GET", b"HEAD"):
            raise RegistryError(ErrorCode.UNSUPPORTED, "files are read-only: GET or HEAD", status=405,
                                headers=((b"allow", b"GET, HEAD"),))
        # Before any routing: who the client is decides what it may learn.
        await self._authenticate(request)
        if state.finished:
            return
        if b"?" in request.uri:
            raise BadPath("a file path takes no query")
        # The raw path, never twisted.web's decoded one: "%2e%2e" must be seen.
        raw = request.path.split(b"/")[len(request.prepath or []) + 1:]
        if len(raw) < 2:
            raise BadPath("give /files/<remote>/<path>")
        name = raw[0].decode("ascii", "replace")
        if name not in self._files.remotes:
            raise RemoteUnknown(f"no file remote is named {name!r}")
        state.upstream = name  # the access event names the remote
        path = parse_path(raw[1:])
        if request.method == b"HEAD":
            await self._head(request, state, name, path)
            return
        found = await self._files.lookup(name, path, ranged=request.getHeader(b"range") is not None)
        result = found.hit.result
        state.result = result
        source = found.hit.source
        if state.finished:
            source.release()
            return
        total = source.size
        etag = _etag(found.key)
        request.setHeader(b"etag", etag)
        if found.last_modified is not None:
            request.setHeader(b"last-modified", found.last_modified.encode("ascii"))
        last_modified = found.last_modified.encode("ascii") if found.last_modified is not None else None
        headers = request.requestHeaders
        if not_modified(headers.getRawHeaders(b"if-none-match", []), headers.getRawHeaders(b"if-modified-since", []),
                        etag, immutable=False, last_modified=last_modified):
            # RFC 9110 §13.1.1, §13.1.3: the client's copy is this version.
            source.release()
            request.setResponseCode(304)
            request.finish()
            return
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"ocicache-cache", str(found.hit.result).encode("ascii"))
        if found.hit.result is CacheResult.STALE:
            request.setHeader(b"warning", b'110 - "Response is Stale"')
        start, end = 0, total
        if total is not None:
            try:
                honoured = if_range_holds(request.getHeader(b"if-range"), etag)
                wanted = parse_range(request.getHeader(b"range"), total) if honoured else None
            except Unsatisfiable:
                source.release()
                # RFC 9110 §15.5.17: 416 with the complete length.
                raise RegistryError(ErrorCode.RANGE_INVALID, "the requested range is not satisfiable",
                                    headers=((b"content-range", b"bytes */%d" % total),)) from None
            if wanted is not None:
                request.setResponseCode(206)
                request.setHeader(b"content-range", wanted.content_range(total))
                start, end = wanted.start, wanted.end
            request.setHeader(b"content-length", b"%d" % ((end if end is not None else total) - start))
        served = self._metrics.bytes_served.labels("upstream" if result is CacheResult.MISS else "cache")

        def on_bytes(count: int) -> None:
            state.bytes += count
            served.inc(count)
        bodies = BodySender(self._reactor, self._budget, self._server.sendfile, self._server.stall_timeout,
                            self._metrics.sendfile_bytes.inc)
        bodies.send(request, source, start, end, on_bytes)

    async def _head(self, request: Request, state: Exchange, name: str, path: FilePath) -> None:
        size = await self._files.size(name, path)
        if size is None:
            # Not stored: the remote's own HEAD (nothing fetched, nothing kept).
            size = await self._files.remote_size(name, path)
        if state.finished:
            return
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"content-type", b"application/octet-stream")
        if size is not None:
            request.setHeader(b"content-length", b"%d" % size)
        request.finish()

    def _failed(self, failure: Failure, request: Request, state: Exchange) -> None:
        error = registry_error(failure.value) if failure.value is not None else None
        if error is None:
            log.failure("Unexpected error answering {method} {uri}", failure,
                        method=request.method.decode("ascii", "replace"),
                        uri=request.uri.decode("ascii", "replace"))
            error = internal_error()
        if state.finished:
            return
        if request.startedWriting:
            abort_response(request)
            return
        request.write(render_error(request, error))
        request.finish()


def _etag(key: FileKey) -> bytes:
    # The key names one version of the file: a strong validator (RFC 9110 §8.8.3).
    return b'"%s"' % key.encoded.encode("ascii")

