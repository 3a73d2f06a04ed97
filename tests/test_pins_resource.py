"""
The C{/pins} operator resource refuses every client that is not on the
loopback interface, before it reads anything of the request or asks the
warmer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.test.requesthelper import DummyRequest

from ocicache._oci._pins import PinsResource


class _NoWarmer:
    """A warmer that must not be reached."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the warmer was asked for {name!r}")


@pytest.mark.parametrize("address", [IPv4Address("TCP", "10.0.0.7", 40000),
                                     IPv6Address("TCP", "2001:db8::7", 40000)])
@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE"])
def test_a_client_off_the_loopback_is_refused(address: Any, method: bytes) -> None:
    request = DummyRequest([b""])
    request.method = method
    request.client = address
    request.args = {b"ref": [b"docker.io/library/alpine:3.20"]}
    body = PinsResource(_NoWarmer()).render(request)  # type: ignore[arg-type]
    assert request.responseCode == 403
    assert isinstance(body, bytes)
    [error] = json.loads(body)["errors"]
    assert error["code"] == "DENIED" and "loopback" in error["message"]
