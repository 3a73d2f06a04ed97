"""
Registry errors, rendered the way the distribution-spec says clients
expect them: a JSON body C{{"errors": [{"code", "message", "detail"}]}}
(distribution-spec, "Error Codes").
"""

from __future__ import annotations

import json

from attrs import field, frozen
from twisted.web.iweb import IRequest, IResponse
from twisted.web.server import Request

__all__ = ["RegistryError", "error_for_response", "render_error"]

# distribution-spec "Error Codes": the code and the HTTP status that
# goes with it.
_STATUS = {
    "BLOB_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "RANGE_INVALID": 416,
    "PAGINATION_NUMBER_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "UPSTREAM_UNAVAILABLE": 502,
}


@frozen
class RegistryError(Exception):
    """
    An error to answer a client with.  C{status} defaults to the one the
    spec pairs with C{code}; C{headers} carries extras such as
    C{Retry-After}.
    """

    code: str
    message: str
    detail: object = None
    status: int = field(default=0)
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", _STATUS.get(self.code, 400))

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def body(self) -> bytes:
        entry: dict[str, object] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}).encode("utf-8")


def render_error(request: IRequest | Request, error: RegistryError) -> bytes:
    """
    Set the status and headers for C{error} on C{request} and return the
    body, which a HEAD request must not send (RFC 9110 §9.3.2), but whose
    length it still announces.
    """
    body = error.body()
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    for name, value in error.headers:
        request.setHeader(name, value)
    if request.method == b"HEAD":
        return b""
    return body


def error_for_response(response: IResponse, not_found: str, message: str) -> RegistryError:
    """
    The error to pass on to a client for an upstream's non-success answer.
    A 404 becomes C{not_found}; a rate limit keeps its C{Retry-After} so
    clients back off as the upstream asked; anything else that is the
    upstream's fault is a 502, never a 500 of ours.
    """
    code = response.code
    if code == 404:
        return RegistryError(not_found, message)
    if code == 401:
        return RegistryError("UNAUTHORIZED", "the upstream registry refused ocicache's credentials")
    if code == 403:
        return RegistryError("DENIED", "the upstream registry denied access")
    if code == 429:
        retry_after = response.headers.getRawHeaders(b"retry-after", [None])[0]
        headers = ((b"retry-after", retry_after),) if retry_after is not None else ()
        return RegistryError("TOOMANYREQUESTS", "the upstream registry is rate limiting", headers=headers)
    return RegistryError(
        "UPSTREAM_UNAVAILABLE", f"the upstream registry answered {code}", status=502
    )
