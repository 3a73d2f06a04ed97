"""
The twisted.web resource tree: C{/v2/} (the distribution-spec pull API,
L{ocicache._web._pipeline}) and C{/token} (L{ocicache._web._token}) under a
root that answers everything else with a JSON 404.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from .._spec._errors import ErrorCode, RegistryError
from ._errors import render_error
from ._pipeline import RegistryResource
from ._responses import common_headers
from ._services import Services
from ._token import TokenResource

__all__ = ["RootResource", "Services"]


class _ErrorResource(Resource):
    """Answers every method with one registry error."""

    isLeaf = True

    def __init__(self, error: RegistryError) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._error = error

    def render(self, request: IRequest) -> bytes:
        common_headers(request)
        return render_error(request, self._error)


class RootResource(Resource):
    """
    C{/}: only C{/v2/} lives here; everything else is a JSON 404, never an
    HTML page.
    """

    def __init__(self, services: Services) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self.putChild(b"v2", RegistryResource(services))
        self.putChild(b"token", TokenResource(services))

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return _ErrorResource(RegistryError(ErrorCode.UNSUPPORTED, "not a registry endpoint", status=404))

    def render(self, request: IRequest) -> bytes:
        return self.getChild(b"", request).render(request)  # type: ignore[no-any-return]
