"""
A property-based fuzzer (hypothesis) against the real daemon: generated
request lines, headers, names, references, digests, query strings and
C{Range} headers, sent over raw sockets.  Whatever the request:

  - never a 5xx that ocicache made: a 5xx only when the upstream (the
    counting hop) answered one, or failed, for that very request;
  - on a 4xx (but to a C{HEAD}), a distribution-spec error body: JSON
    C{{"errors": [{"code", "message"}]}} with a code of the spec's;
  - no Python or Twisted repr and no traceback in any answer, and no
    traceback, C{Unhandled} or C{CRITICAL} line in the daemon's log;
  - never a request to an unconfigured host: the daemon has one upstream
    (the hop); the hop sees only requests for it, and a trap listener
    that names and C{?ns=} point at is never connected to.

The default run is short (L{DEFAULT_EXAMPLES} examples, well under a
minute); C{OCICACHE_FUZZ_EXAMPLES=5000} runs a long one (docs/contributing-fuzz.md).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocicache._spec._errors import ErrorCode
from ocitest import free_port
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import all_images

pytestmark = pytest.mark.integration

DEFAULT_EXAMPLES = 150
EXAMPLES = int(os.environ.get("OCICACHE_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
_SPEC_CODES = {str(code) for code in ErrorCode}
_REPRS = re.compile(rb"Traceback|Failure|object at 0x|<twisted\.|<ocicache\.")
_LOG_ALARMS = ("Traceback", "Unhandled", "CRITICAL", "critical]")
_IMAGES = [image for name, image in all_images().items() if name in ("oci", "list", "index", "team", "big1")]
"""The seeded images the fuzzer names (not the 64 and 256 MiB ones: their downloads are slow)."""


class _Trap:
    """A listener that only counts who connects: a host nothing may fetch from."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def trap() -> Iterator[_Trap]:
    trap = _Trap()
    try:
        yield trap
    finally:
        trap.stop()


# -- what is sent

_HEX = "0123456789abcdef"
_TCHARS = st.text(alphabet="!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                  min_size=1, max_size=12)
_PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=40)
_ANY_BYTES = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def _digests(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(known),
        st.text(alphabet=_HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h),
        st.text(alphabet=_HEX, min_size=0, max_size=70).map(lambda h: "sha256:" + h),
        st.text(alphabet=_HEX + "ABCDEF", min_size=128, max_size=128).map(lambda h: "sha512:" + h),
        st.sampled_from(["md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:", ":", "sha256:" + "G" * 64,
                         "sha256%3A" + "a" * 64]),
        _PRINTABLE,
    )


def _names(trap_host: str) -> st.SearchStrategy[str]:
    component = st.from_regex(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", fullmatch=True).filter(lambda s: len(s) < 30)
    return st.one_of(
        st.sampled_from([image.repo for image in _IMAGES]),
        st.sampled_from([image.repo for image in _IMAGES]).map(lambda r: "docker.io/" + r),
        st.lists(component, min_size=1, max_size=4).map("/".join),
        st.sampled_from([
            f"{trap_host}/library/x", f"localhost:{trap_host.rpartition(':')[2]}/x", "evil.example/x",
            "ghcr.io/x/y", "..", "a/../b", "%2e%2e/x", "a//b", "UPPER/case", "a/%2f/b", "docker.io",
            "a" * 300, "/".join(["a"] * 200), "library/ocitest-oci/", "\u00e9t\u00e9/x",
        ]),
        _PRINTABLE.filter(lambda s: "?" not in s and "#" not in s),
    )


def _tails(known_digests: list[str]) -> st.SearchStrategy[str]:
    tags = st.one_of(st.sampled_from(["v1", "latest", "nope"]),
                     st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True), _PRINTABLE)
    digests = _digests(known_digests)
    return st.one_of(
        st.builds(lambda r: "manifests/" + r, st.one_of(tags, digests)),
        st.builds(lambda d: "blobs/" + d, digests),
        st.just("tags/list"),
        st.builds(lambda d: "referrers/" + d, digests),
        st.sampled_from(["blobs/uploads/", "blobs/uploads/abc", "manifests/", "tags/", "", "catalog"]),
        _PRINTABLE,
    )


def _queries(trap_host: str) -> st.SearchStrategy[str]:
    key = st.one_of(st.sampled_from(["ns", "n", "last", "artifactType", "digest", "mount", "scope"]), _PRINTABLE)
    value = st.one_of(
        st.sampled_from(["docker.io", "ghcr.io", trap_host, "evil.example", "", "1", "0", "-1", "10001",
                         "99999999999999999999", "v1", "application/vnd.oci.image.manifest.v1+json"]),
        _PRINTABLE.map(lambda s: s.replace("&", "").replace("#", "")),
    )
    pair = st.tuples(key, value).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(pair, max_size=4).map("&".join)


def _ranges() -> st.SearchStrategy[str]:
    number = st.one_of(st.integers(min_value=0, max_value=10**7).map(str), st.just("99999999999999999999999"),
                       st.just(""))
    spec = st.builds(lambda a, b: f"{a}-{b}", number, number)
    return st.one_of(
        st.lists(spec, min_size=1, max_size=3).map(lambda specs: "bytes=" + ",".join(specs)),
        st.sampled_from(["bytes=0-0", "bytes=-1", "bytes=5-", "bytes=-0", "bytes=10-5", "items=0-1", "bytes",
                         "bytes=", "bytes=--1", "bytes=0-1,0-1"]),
        _PRINTABLE,
    )


@st.composite
def _requests(draw: st.DrawFn, port: int, trap_host: str) -> tuple[bytes, bytes]:
    """A request's bytes and its method."""
    known = sorted({image.manifest_digest for image in _IMAGES}
                   | {layer.digest for image in _IMAGES for layer in image.layers})
    method = draw(st.one_of(
        st.just(b"GET"), st.just(b"GET"), st.just(b"HEAD"),
        st.sampled_from([b"PUT", b"POST", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"get"]),
        _TCHARS.map(lambda s: s.encode("ascii")),
        _ANY_BYTES,
        st.just(b"\x16\x03\x01"),  # a TLS handshake record on the plain port
    ))
    if draw(st.integers(0, 9)) == 0:
        target = draw(st.one_of(_ANY_BYTES, _PRINTABLE.map(lambda s: s.encode("ascii")),
                                st.sampled_from([b"/", b"/v2", b"/v2/", b"/token", b"*", b"/v2/_catalog",
                                                 b"http://evil.example/v2/", b"/v2/../etc/passwd"])))
    else:
        path = f"/v2/{draw(_names(trap_host))}/{draw(_tails(known))}"
        query = draw(_queries(trap_host))
        target = (path + ("?" + query if query else "")).encode("utf-8")
    version = draw(st.one_of(st.just(b"HTTP/1.1"), st.just(b"HTTP/1.1"), st.just(b"HTTP/1.0"),
                             st.sampled_from([b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b""])))
    headers: list[tuple[bytes, bytes]] = []
    host = draw(st.sampled_from(["ours", "ours", "ours", "none", "two", "trap", "garbage"]))
    if host in ("ours", "two"):
        headers.append((b"Host", f"127.0.0.1:{port}".encode()))
    if host == "two":
        headers.append((b"Host", b"evil.example"))
    if host == "trap":
        headers.append((b"Host", trap_host.encode()))
    if host == "garbage":
        headers.append((b"Host", draw(_ANY_BYTES)))
    optional = {
        b"Range": _ranges().map(str.encode),
        b"If-Range": st.one_of(_digests(known).map(lambda d: f'"{d}"'), _PRINTABLE).map(str.encode),
        b"If-None-Match": st.one_of(_digests(known).map(lambda d: f'"{d}"'), st.just("*"),
                                    _digests(known).map(lambda d: f'W/"{d}"'), _PRINTABLE).map(str.encode),
        b"If-Modified-Since": st.sampled_from([b"Sun, 06 Nov 1994 08:49:37 GMT", b"yesterday", b""]),
        b"Accept": st.one_of(st.sampled_from([
            "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json", "*/*", "text/html;q=0.9, */*;q=0.1",
        ]), _PRINTABLE).map(str.encode),
        b"Authorization": st.one_of(st.sampled_from([b"Basic Zm9vOmJhcg==", b"Bearer x.y.z", b"Basic !!!"]),
                                    _ANY_BYTES),
        b"Content-Length": st.sampled_from([b"0", b"5", b"-1", b"abc", b"1" * 30]),
        b"Transfer-Encoding": st.sampled_from([b"chunked", b"gzip", b""]),
        b"Connection": st.sampled_from([b"keep-alive", b"upgrade", b"close, x"]),
        b"X-Fuzz": _ANY_BYTES,
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4)):
        headers.append((name, draw(optional[name])))
    if draw(st.integers(0, 9)) == 0:
        headers.append((draw(_ANY_BYTES), draw(_ANY_BYTES)))  # a header line of any shape
    headers.append((b"Connection", b"close"))
    head = method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n", method


# -- what is checked


def _exchange(port: int, request: bytes, method: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """Send C{request}; the response's status, headers, body, and its raw bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # answered and closed early: the answer is still there to read
        received = b""
        while True:
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                headers = _headers(head)
                status = _status(head)
                if method == b"HEAD" or status in (204, 304):
                    return status, headers, b"", received
                length = headers.get("content-length")
                if length is not None and length.isdigit() and len(body) >= int(length):
                    return status, headers, body[:int(length)], received
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            received += chunk
    head, sep, body = received.partition(b"\r\n\r\n")
    assert sep, f"no complete response to {request[:200]!r}: {received[:300]!r}"
    return _status(head), _headers(head), body, received


def _status(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    assert len(parts) >= 2 and parts[0] in (b"HTTP/1.1", b"HTTP/1.0") and parts[1].isdigit(), head[:200]
    return int(parts[1])


def _headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _assert_spec_error(status: int, headers: dict[str, str], body: bytes, request: bytes) -> None:
    assert headers.get("content-type") == "application/json", (status, headers, body[:200], request[:300])
    errors = json.loads(body)["errors"]
    assert errors and all(error["code"] in _SPEC_CODES and isinstance(error["message"], str)
                          for error in errors), (body[:300], request[:300])


def test_generated_requests_never_break_the_daemon(
    daemon_factory: Callable[..., Daemon], hop: Hop, trap: _Trap,
) -> None:
    daemon = daemon_factory(upstreams=[Upstream("docker.io", hop.url, default=True)])
    trap_host = f"127.0.0.1:{trap.port}"
    log_seen = [len(daemon.log_text())]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        request, method = data.draw(_requests(daemon.port, trap_host), label="request")
        hop.wait_idle(timeout=30, settle=0)
        before = len(hop.requests)
        status, headers, body, raw = _exchange(daemon.port, request, method)
        hop.wait_idle(timeout=30, settle=0)
        seen = hop.requests[before:]
        if status >= 500:
            # Only the upstream's own failure may come back as one.
            assert any(r.status is None or r.status >= 500 or r.error for r in seen), (
                status, body[:300], request[:300], seen)
        elif status >= 400 and method != b"HEAD":
            _assert_spec_error(status, headers, body, request)
        assert _REPRS.search(raw) is None, (raw[:500], request[:300])
        # One upstream: whatever the hop saw was for it, and nothing else was asked.
        assert all(r.headers.get("Host") == hop.host for r in seen), seen
        assert trap.connections == 0, request[:300]
        log = daemon.log_text()
        fresh, log_seen[0] = log[log_seen[0]:], len(log)
        assert not any(alarm in fresh for alarm in _LOG_ALARMS), (fresh[-3000:], request[:300])

    check()
    assert daemon.running
