"""
Redirects followed by the upstream clients (L{ocicache._upstream._redirects}),
here through a C{[[files]]} remote against small real HTTP servers on
loopback: C{Authorization} reaches only the origin it was issued for
(RFC 9110 §15.4), and a redirect loop or a non-HTTP C{Location} is an
unavailable upstream, not a hang.  The registry client's side is in
C{test_upstream.py}.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import treq
from hyperlink import DecodedURL
from twisted.internet import reactor

from ocicache._files._paths import parse_path
from ocicache._files._remote import Remote
from ocicache._ops._config import Credentials
from ocicache._ops._config._files import RemoteConfig
from ocicache._upstream._client import make_pool
from ocicache._upstream._errors import UpstreamUnavailable
from ocicache._upstream._redirects import MAX_REDIRECTS
from test_upstream import PASSWORD, _basic, _Recorder, servers

__all__ = ["servers"]  # the fixture, shared with test_upstream.py

BODY = b"a release tarball " * 500


def _remote(url: str) -> Remote:
    config = RemoteConfig(name="releases", url=DecodedURL.from_text(url), credentials=Credentials("bot", PASSWORD))
    return Remote(config, reactor, make_pool(reactor))


async def _get(remote: Remote, path: str) -> tuple[int, bytes]:
    response = await remote.request("GET", parse_path(path.encode("ascii").split(b"/")))
    body: bytes = await treq.content(response)
    return response.code, body


@pytest_twisted.ensureDeferred
async def test_a_files_redirect_to_another_host_drops_the_credentials(servers: Any) -> None:
    mirror = _Recorder(lambda request: BODY)
    mirror_url = servers(mirror)

    def origin_answer(request: Any) -> bytes:
        if request.path.startswith(b"/back/"):
            return BODY
        if not _basic(request):
            request.setResponseCode(401)
            return b""
        request.setResponseCode(302)
        request.setHeader(b"location", f"{mirror_url}/pool/app.tar.gz".encode())
        return b""

    origin = _Recorder(origin_answer)
    assert await _get(_remote(servers(origin)), "pool/app.tar.gz") == (200, BODY)
    assert origin.seen[0][1].get(b"authorization") is not None
    assert [uri for uri, _ in mirror.seen] == [b"/pool/app.tar.gz"]
    assert b"authorization" not in mirror.seen[0][1]


@pytest_twisted.ensureDeferred
async def test_a_files_redirect_back_to_the_origin_gets_the_credentials_again(servers: Any) -> None:
    origin_url: list[str] = []

    def hop_answer(request: Any) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", f"{origin_url[0]}/back/app.tar.gz".encode())
        return b""

    hop = _Recorder(hop_answer)
    hop_url = servers(hop)

    def origin_answer(request: Any) -> bytes:
        if not _basic(request):
            request.setResponseCode(401)
            return b""
        if request.path.startswith(b"/back/"):
            return BODY
        request.setResponseCode(302)
        request.setHeader(b"location", f"{hop_url}/elsewhere".encode())
        return b""

    origin = _Recorder(origin_answer)
    origin_url.append(servers(origin))
    assert await _get(_remote(origin_url[0]), "pool/app.tar.gz") == (200, BODY)
    assert b"authorization" not in hop.seen[0][1]
    assert origin.seen[-1][0] == b"/back/app.tar.gz"


@pytest.mark.parametrize("location", [b"ftp://127.0.0.1/app.tar.gz", b"loop"])
@pytest_twisted.ensureDeferred
async def test_a_non_http_location_or_a_loop_is_an_unavailable_remote(servers: Any, location: bytes) -> None:
    def answer(request: Any) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", location if location != b"loop" else request.uri)
        return b""

    origin = _Recorder(answer)
    with pytest.raises(UpstreamUnavailable, match="redirect"):
        await _get(_remote(servers(origin)), "pool/app.tar.gz")
    if location == b"loop":
        assert len(origin.seen) == MAX_REDIRECTS + 1
