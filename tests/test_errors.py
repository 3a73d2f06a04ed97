"""
Tests for L{ocicache._web._errors}: every 429 carries a well-formed
C{Retry-After} (RFC 9110 §10.2.3), whatever raised it.
"""

from __future__ import annotations

from typing import cast

import pytest
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from ocicache._fetch._slots import Busy
from ocicache._spec._errors import ErrorCode, RegistryError
from ocicache._upstream._errors import UpstreamRateLimited
from ocicache._web._errors import DEFAULT_RETRY_AFTER, registry_error, render_error


def _render(error: RegistryError) -> DummyRequest:
    request = DummyRequest([b""])
    # DummyRequest provides IRequest without declaring it to mypy.
    render_error(cast(IRequest, request), error)
    return request


def _retry_after(error: BaseException) -> list[bytes] | None:
    mapped = registry_error(error)
    assert mapped is not None
    request = _render(mapped)
    assert request.responseCode == 429
    values = request.responseHeaders.getRawHeaders(b"retry-after")
    return None if values is None else list(values)


@pytest.mark.parametrize("given", [b"120", b" 120 ", b"Wed, 21 Oct 2026 07:28:00 GMT"])
def test_the_upstreams_retry_after_is_passed_on(given: bytes) -> None:
    assert _retry_after(UpstreamRateLimited("limited", given)) == [given.strip()]


@pytest.mark.parametrize("given", [None, b"", b"soon", b"-1", b"1.5", b"12345678901", b"120\r\nSet-Cookie: x"])
def test_a_missing_or_malformed_retry_after_gets_the_default(given: bytes | None) -> None:
    assert _retry_after(UpstreamRateLimited("limited", given)) == [DEFAULT_RETRY_AFTER]


def test_ocicaches_own_429_keeps_its_wait() -> None:
    assert _retry_after(Busy("the download queue is full", 3)) == [b"3"]


def test_a_429_raised_without_any_header_gets_one() -> None:
    assert _retry_after(RegistryError(ErrorCode.TOOMANYREQUESTS, "slow down")) == [DEFAULT_RETRY_AFTER]


def test_other_errors_get_none() -> None:
    request = _render(RegistryError(ErrorCode.MANIFEST_UNKNOWN, "no"))
    assert request.responseHeaders.getRawHeaders(b"retry-after") is None
