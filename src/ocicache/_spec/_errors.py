"""
Registry errors as the distribution-spec defines them: a code, the HTTP
status that goes with it, and the JSON body
C{{"errors": [{"code", "message", "detail"}]}} (distribution-spec, "Error
Codes").
"""

from __future__ import annotations

import json
from enum import StrEnum

from attrs import field, frozen

__all__ = ["ErrorCode", "RegistryError"]


class ErrorCode(StrEnum):
    """
    distribution-spec "Error Codes", plus C{UPSTREAM_UNAVAILABLE} for a
    mirror whose upstream failed and C{UNKNOWN} for our own bugs.
    """

    BLOB_UNKNOWN = "BLOB_UNKNOWN"
    DIGEST_INVALID = "DIGEST_INVALID"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    MANIFEST_UNKNOWN = "MANIFEST_UNKNOWN"
    NAME_INVALID = "NAME_INVALID"
    NAME_UNKNOWN = "NAME_UNKNOWN"
    RANGE_INVALID = "RANGE_INVALID"
    PAGINATION_NUMBER_INVALID = "PAGINATION_NUMBER_INVALID"
    UNAUTHORIZED = "UNAUTHORIZED"
    DENIED = "DENIED"
    UNSUPPORTED = "UNSUPPORTED"
    TOOMANYREQUESTS = "TOOMANYREQUESTS"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UNKNOWN = "UNKNOWN"

    @property
    def status(self) -> int:
        """The HTTP status the spec pairs with this code."""
        return _STATUS[self]


_STATUS = {
    ErrorCode.BLOB_UNKNOWN: 404,
    ErrorCode.DIGEST_INVALID: 400,
    ErrorCode.MANIFEST_INVALID: 400,
    ErrorCode.MANIFEST_UNKNOWN: 404,
    ErrorCode.NAME_INVALID: 400,
    ErrorCode.NAME_UNKNOWN: 404,
    ErrorCode.RANGE_INVALID: 416,
    ErrorCode.PAGINATION_NUMBER_INVALID: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.DENIED: 403,
    ErrorCode.UNSUPPORTED: 405,
    ErrorCode.TOOMANYREQUESTS: 429,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.UNKNOWN: 500,
}


@frozen
class RegistryError(Exception):
    """
    An error to answer a client with.  C{status} defaults to the one the
    spec pairs with C{code}; C{headers} carries extras such as
    C{Retry-After}.
    """

    code: ErrorCode = field(converter=ErrorCode)
    message: str
    detail: object = None
    status: int = field(default=0)
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", self.code.status)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def body(self) -> bytes:
        entry: dict[str, object] = {"code": str(self.code), "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}).encode("utf-8")
