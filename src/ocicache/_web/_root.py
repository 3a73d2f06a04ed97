"""
The root of the site's resource tree: each protocol front-end's resources
under their own first path segment (C{/v2/} and C{/token} for images),
and a JSON 404 for everything else, never an HTML page.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from .._spec._errors import ErrorCode, RegistryError
from ._errors import render_error
from ._responses import common_headers

__all__ = ["RootResource"]


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
    C{/}: the front-ends' resources, by their first path segment.
    """

    def __init__(self, children: Mapping[bytes, IResource]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return _ErrorResource(RegistryError(ErrorCode.UNSUPPORTED, "not a registry endpoint", status=404))

    def render(self, request: IRequest) -> bytes:
        return self.getChild(b"", request).render(request)  # type: ignore[no-any-return]
