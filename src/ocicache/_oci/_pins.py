"""
C{/pins} on the operator listener: what C{ocicache pin}, C{unpin} and
C{pins} talk to.

    GET    /pins                                   the pins, as JSON
    POST   /pins?ref=REF[&platform=os/arch]...     pin REF (resolved and fetched by the daemon)
    DELETE /pins?ref=REF                           release it

Only a client on the loopback interface may use it: the operator on the
daemon's own host.  Pinning changes what the store keeps, so it is not for
whoever can reach a metrics port; nothing else authenticates it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._spec._closure import Platform, host_platform
from .._spec._errors import ErrorCode, RegistryError
from .._spec._reference import Digest, InvalidReference, parse_image_reference
from .._web._errors import internal_error, registry_error, render_error
from .._web._json_answer import from_loopback, write_json
from ._warm import Warmer

__all__ = ["PinsResource"]

log = Logger()


class PinsResource(Resource):
    isLeaf = True

    def __init__(self, warmer: Warmer, on_changed: Callable[[], None] = lambda: None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._warmer = warmer
        self._on_changed = on_changed

    def render(self, request: Request) -> int | bytes:
        if not from_loopback(request):
            return render_error(request, RegistryError(ErrorCode.DENIED, "pins are managed from the loopback"
                                                                         " interface only", status=403))
        if request.method not in (b"GET", b"POST", b"DELETE"):
            request.setHeader(b"allow", b"GET, POST, DELETE")
            return render_error(request, RegistryError(ErrorCode.UNSUPPORTED, "GET, POST or DELETE", status=405))
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda result: gone.append(True))
        answering = Deferred.fromCoroutine(self._answer(request))
        answering.addCallback(lambda body: write_json(request, body, gone))
        answering.addErrback(self._failed, request, gone)
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> object:
        if request.method == b"GET":
            return {"pins": await self._warmer.pins()}
        args = request.args or {}
        refs = args.get(b"ref", [])
        if len(refs) != 1:
            raise RegistryError(ErrorCode.UNSUPPORTED, "give ref= once")
        try:
            image = parse_image_reference(refs[0].decode("ascii"))
            platforms = [Platform.parse(value.decode("ascii")) for value in args.get(b"platform", [])]
        except (InvalidReference, ValueError, UnicodeDecodeError) as e:
            raise RegistryError(ErrorCode.NAME_INVALID, f"not an image reference or platform: {e}") from None
        upstream, repo = self._warmer.target(image)
        if request.method == b"DELETE":
            released = await self._warmer.unpin(upstream.name, repo, str(image.reference))
            if not released:
                raise RegistryError(ErrorCode.NAME_UNKNOWN, f"{image} is not pinned", status=404)
            self._on_changed()
            return {"unpinned": f"{upstream.name}/{repo}{_separator(image.reference)}{image.reference}"}
        report = await self._warmer.pin(upstream, repo, image.reference, platforms or [host_platform()])
        self._on_changed()
        return {"pinned": report.as_json()}

    def _failed(self, failure: Failure, request: Request, gone: list[bool]) -> None:
        error = registry_error(failure.value) if failure.value is not None else None
        if error is None:
            log.failure("Unexpected error answering {method} /pins", failure,
                        method=request.method.decode("ascii", "replace"))
            error = internal_error()
        if gone:
            return  # the operator's command went away: nobody to tell
        request.write(render_error(request, error))
        request.finish()


def _separator(reference: Digest | str) -> str:
    return "@" if isinstance(reference, Digest) else ":"
