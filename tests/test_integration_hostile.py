"""
Hostile requests against the real daemon: each must get a 4xx with a JSON
C{{"errors": [...]}} body and the expected code, never a 5xx, never a
request upstream (the hop sees nothing), and never a file outside the cache
directory.

Where the distribution/OCI specs leave the code open, EXPECTED lists every
acceptable code (see the comments there); elsewhere it is one code.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from ocitest import REPO_ROOT, http_request
from ocitest.daemon import Daemon, DaemonPool, default_upstreams
from ocitest.hop import Hop
from ocitest.images import Image

pytestmark = pytest.mark.integration

# Every hostile name carries this marker, so a file created from one is
# easy to find anywhere.
EVIL = "ocitest-evil"

HEX = "5586d862f6c7c50e94c77d062be58876468762574dfcb5da6a5e634e1b8aef8c"  # any 64 hex digits
VALID_DIGEST = "sha256:" + HEX
REPO = "docker.io/library/ocitest-oci"

# Where the specs leave the choice open:
#   an unknown upstream (ns or host prefix) is "not known here"
UNKNOWN_UPSTREAM = {"DENIED", "NAME_UNKNOWN"}
#   an invalid tag is "no such manifest" (no spec code for a bad tag on GET)
BAD_TAG = {"MANIFEST_UNKNOWN", "MANIFEST_INVALID", "TAG_INVALID"}
#   a bad page size: distribution's code for it
BAD_N = {"PAGINATION_NUMBER_INVALID"}

NAME_CASES: list[tuple[str, str, set[str]]] = [
    # (id, path, acceptable codes)
    ("dotdot", f"/v2/docker.io/library/../../../../tmp/{EVIL}/manifests/v1", {"NAME_INVALID"}),
    ("dotdot-ns", f"/v2/library/../../{EVIL}/manifests/v1?ns=docker.io", {"NAME_INVALID"}),
    # ".." as the first segment may be read as a (bad) registry host
    ("dotdot-default", f"/v2/../../{EVIL}/manifests/v1", {"NAME_INVALID"} | UNKNOWN_UPSTREAM),
    ("dot-segment", f"/v2/docker.io/library/./{EVIL}/manifests/v1", {"NAME_INVALID"}),
    ("pct-dotdot", f"/v2/docker.io/library/%2e%2e/%2e%2e/{EVIL}/manifests/v1", {"NAME_INVALID"}),
    ("pct-dotdot-upper", f"/v2/docker.io/library/%2E%2E/{EVIL}/manifests/v1", {"NAME_INVALID"}),
    ("pct-slash", "/v2/docker.io/library%2focitest-oci/manifests/v1", {"NAME_INVALID"}),
    ("pct-slash-upper", "/v2/docker.io/library%2Focitest-oci/manifests/v1", {"NAME_INVALID"}),
    ("pct-dotdot-slash", f"/v2/docker.io/library/%2e%2e%2f%2e%2e%2f{EVIL}/manifests/v1", {"NAME_INVALID"}),
    ("backslash", f"/v2/docker.io/library\\..\\{EVIL}/manifests/v1", {"NAME_INVALID"}),
    ("nul", f"/v2/docker.io/library/{EVIL}%00/manifests/v1", {"NAME_INVALID"}),
    ("uppercase", "/v2/docker.io/library/OCITEST-oci/manifests/v1", {"NAME_INVALID"}),
    ("uppercase-ns", "/v2/library/Ocitest-oci/manifests/v1?ns=docker.io", {"NAME_INVALID"}),
    ("empty-segment", "/v2/docker.io/library//ocitest-oci/manifests/v1", {"NAME_INVALID"}),
    ("trailing-separator", "/v2/docker.io/library/ocitest-oci./manifests/v1", {"NAME_INVALID"}),
    ("leading-separator", "/v2/docker.io/library/-ocitest-oci/manifests/v1", {"NAME_INVALID"}),
    ("too-long", "/v2/docker.io/library/" + "a" * 300 + "/manifests/v1", {"NAME_INVALID"}),
    ("too-long-segments", "/v2/docker.io/" + "/".join(["b" * 50] * 6) + "/manifests/v1", {"NAME_INVALID"}),
    ("blob-dotdot", f"/v2/docker.io/../../{EVIL}/blobs/{VALID_DIGEST}", {"NAME_INVALID"}),
    ("blob-pct-slash", f"/v2/docker.io/library%2f{EVIL}/blobs/{VALID_DIGEST}", {"NAME_INVALID"}),
    ("tags-dotdot", f"/v2/docker.io/library/%2e%2e/{EVIL}/tags/list", {"NAME_INVALID"}),
    ("tags-uppercase", "/v2/docker.io/library/OCITEST/tags/list", {"NAME_INVALID"}),
]

DIGEST_CASES: list[tuple[str, str, set[str]]] = [
    ("blob-xyz", f"/v2/{REPO}/blobs/sha256:xyz", {"DIGEST_INVALID"}),
    ("blob-md5", f"/v2/{REPO}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", {"DIGEST_INVALID"}),
    ("blob-short", f"/v2/{REPO}/blobs/sha256:abcd", {"DIGEST_INVALID"}),
    ("blob-long", f"/v2/{REPO}/blobs/sha256:{HEX}0", {"DIGEST_INVALID"}),
    ("blob-upper", f"/v2/{REPO}/blobs/sha256:{HEX.upper()}", {"DIGEST_INVALID"}),
    ("blob-empty", f"/v2/{REPO}/blobs/sha256:", {"DIGEST_INVALID"}),
    ("blob-no-algorithm", f"/v2/{REPO}/blobs/{HEX}", {"DIGEST_INVALID"}),
    ("blob-pct-traversal", f"/v2/{REPO}/blobs/sha256:..%2f..%2f{EVIL}", {"DIGEST_INVALID"}),
    ("blob-nul", f"/v2/{REPO}/blobs/sha256:{HEX}%00", {"DIGEST_INVALID"}),
    ("blob-sha512-short", f"/v2/{REPO}/blobs/sha512:{HEX}", {"DIGEST_INVALID"}),
    ("blob-ns-xyz", "/v2/library/ocitest-oci/blobs/sha256:xyz?ns=docker.io", {"DIGEST_INVALID"}),
    ("manifest-xyz", f"/v2/{REPO}/manifests/sha256:xyz", {"DIGEST_INVALID"}),
    ("manifest-md5", f"/v2/{REPO}/manifests/md5:d41d8cd98f00b204e9800998ecf8427e", {"DIGEST_INVALID"}),
    ("manifest-short", f"/v2/{REPO}/manifests/sha256:abcd", {"DIGEST_INVALID"}),
    ("manifest-upper", f"/v2/{REPO}/manifests/sha256:{HEX.upper()}", {"DIGEST_INVALID"}),
]

TAG_CASES: list[tuple[str, str, set[str]]] = [
    ("tag-leading-dash", f"/v2/{REPO}/manifests/-v1", BAD_TAG),
    ("tag-leading-dot", f"/v2/{REPO}/manifests/.v1", BAD_TAG),
    ("tag-dotdot", f"/v2/{REPO}/manifests/..", BAD_TAG),
    ("tag-pct-dotdot", f"/v2/{REPO}/manifests/%2e%2e", BAD_TAG),
    ("tag-pct-traversal", f"/v2/{REPO}/manifests/..%2f..%2f{EVIL}", BAD_TAG),
    ("tag-too-long", f"/v2/{REPO}/manifests/" + "t" * 129, BAD_TAG),
    ("tag-pct-space", f"/v2/{REPO}/manifests/v%201", BAD_TAG),
]

N_CASES: list[tuple[str, str, set[str]]] = [
    ("n-negative", f"/v2/{REPO}/tags/list?n=-1", BAD_N),
    ("n-abc", f"/v2/{REPO}/tags/list?n=abc", BAD_N),
    ("n-float", f"/v2/{REPO}/tags/list?n=1.5", BAD_N),
    ("n-huge", f"/v2/{REPO}/tags/list?n=" + "9" * 30, BAD_N),
    ("n-ns-negative", "/v2/library/ocitest-oci/tags/list?ns=docker.io&n=-5", BAD_N),
]

UPSTREAM_CASES: list[tuple[str, str, set[str]]] = [
    ("ns-unknown", "/v2/library/ocitest-oci/manifests/v1?ns=evil.example.com", UNKNOWN_UPSTREAM),
    ("ns-unknown-blob", f"/v2/library/ocitest-oci/blobs/{VALID_DIGEST}?ns=evil.example.com", UNKNOWN_UPSTREAM),
    ("ns-loopback", "/v2/library/ocitest-oci/manifests/v1?ns=127.0.0.1:1", UNKNOWN_UPSTREAM),
    ("ns-traversal", f"/v2/library/ocitest-oci/manifests/v1?ns=..%2f..%2f{EVIL}", UNKNOWN_UPSTREAM | {"NAME_INVALID"}),
    ("prefix-unknown", "/v2/evil.example.com/library/ocitest-oci/manifests/v1", UNKNOWN_UPSTREAM),
    ("prefix-unknown-blob", f"/v2/evil.example.com/library/ocitest-oci/blobs/{VALID_DIGEST}", UNKNOWN_UPSTREAM),
    ("prefix-localhost", "/v2/localhost:5000/library/ocitest-oci/manifests/v1", UNKNOWN_UPSTREAM),
    ("prefix-loopback", "/v2/127.0.0.1:1/library/ocitest-oci/manifests/v1", UNKNOWN_UPSTREAM),
    ("prefix-localhost-bare", "/v2/localhost/library/ocitest-oci/manifests/v1", UNKNOWN_UPSTREAM),
]

GET_CASES = NAME_CASES + DIGEST_CASES + TAG_CASES + N_CASES + UPSTREAM_CASES

UPLOAD = "/blobs/uploads/"
PUSH_CASES: list[tuple[str, str]] = [
    ("POST", f"/v2/{REPO}{UPLOAD}"),
    ("POST", f"/v2/library/ocitest-oci{UPLOAD}?ns=docker.io"),
    ("POST", f"/v2/ocitest-oci{UPLOAD}"),
    ("POST", f"/v2/{REPO}{UPLOAD}?digest={VALID_DIGEST}"),
    ("POST", f"/v2/{REPO}{UPLOAD}?mount={VALID_DIGEST}&from=library/ocitest-index"),
    ("GET", f"/v2/{REPO}{UPLOAD}0d9a1e1c-1111-2222-3333-444455556666"),
    ("PATCH", f"/v2/{REPO}{UPLOAD}0d9a1e1c-1111-2222-3333-444455556666"),
    ("PUT", f"/v2/{REPO}{UPLOAD}0d9a1e1c-1111-2222-3333-444455556666?digest={VALID_DIGEST}"),
    ("DELETE", f"/v2/{REPO}{UPLOAD}0d9a1e1c-1111-2222-3333-444455556666"),
    ("PATCH", f"/v2/library/ocitest-oci{UPLOAD}x?ns=docker.io"),
    ("PUT", f"/v2/{REPO}/manifests/v1"),
    ("PUT", f"/v2/{REPO}/manifests/{VALID_DIGEST}"),
    ("PUT", "/v2/library/ocitest-oci/manifests/v1?ns=docker.io"),
    ("PUT", "/v2/ocitest-oci/manifests/v1"),
    ("DELETE", f"/v2/{REPO}/manifests/v1"),
    ("DELETE", f"/v2/{REPO}/manifests/{VALID_DIGEST}"),
    ("DELETE", "/v2/library/ocitest-oci/manifests/v1?ns=docker.io"),
    ("DELETE", f"/v2/{REPO}/blobs/{VALID_DIGEST}"),
    ("DELETE", f"/v2/ocitest-oci/blobs/{VALID_DIGEST}"),
    ("POST", f"/v2/{REPO}/manifests/v1"),
    ("PATCH", f"/v2/{REPO}/manifests/v1"),
    ("PUT", f"/v2/{REPO}/blobs/{VALID_DIGEST}"),
    ("POST", f"/v2/{REPO}/blobs/{VALID_DIGEST}"),
]

PUSH_GET_UPLOAD = {"UNSUPPORTED", "BLOB_UPLOAD_UNKNOWN"}  # GET on an upload's status

_IGNORED = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", "dropin.cache", ".ruff_cache"}


def _tree(root: str, skip: str | None = None) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames
            if d not in _IGNORED and (skip is None or os.path.join(dirpath, d) != skip)
        ]
        for name in dirnames + filenames:
            if name in _IGNORED or name.endswith(".pyc"):
                continue
            found.add(os.path.join(dirpath, name))
    return found


def _evil_paths(*roots: str) -> list[str]:
    hits = []
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        hits += [os.path.join(root, n) for n in names if EVIL in n]
    return hits


@pytest.fixture(scope="module")
def hostile_daemon(tmp_path_factory: pytest.TempPathFactory, hop_server: Hop) -> Iterator[Daemon]:
    base = str(tmp_path_factory.mktemp("hostile"))
    pool = DaemonPool(base, default_upstreams(hop_server.url))
    daemon = pool()
    try:
        yield daemon
    finally:
        pool.stop_all()


@pytest.fixture
def guarded(hostile_daemon: Daemon, hop: Hop, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """
    The daemon, with checks after the test: nothing went upstream, no new
    file outside the cache directory, no hostile name anywhere, still alive.
    """
    daemon = hostile_daemon
    request.node._ocitest_daemons = [daemon]
    cache = os.path.abspath(daemon.cache_dir or "")
    base = os.path.dirname(daemon.workdir)
    # Everything under this module's temporary directory except the cache:
    # the daemon's cwd, config and log live here.
    before = _tree(base, skip=cache)
    yield daemon
    time.sleep(0.1)
    hop.wait_idle(10, settle=0.1)
    assert hop.count() == 0, f"a hostile request reached the upstream:\n{hop.summary()}"
    assert daemon.running, f"the daemon died:\n{daemon.log_tail()}"
    after = _tree(base, skip=cache)
    created = sorted(after - before - {daemon.log_path})
    assert not created, f"files created outside the cache dir: {created}"
    # The repository is not compared file by file (people edit it while the
    # tests run); the marker every hostile name carries is searched instead.
    evil = _evil_paths("/", "/tmp", "/etc", "/root", base, daemon.workdir, os.path.dirname(cache))
    evil += [p for p in _tree(cache) | _tree(REPO_ROOT) if EVIL in p]
    assert not evil, f"a hostile name reached the filesystem: {evil}"
    status, _, _ = http_request(daemon.url + "/v2/")
    assert status == 200
    log = daemon.log_text()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


def _assert_json_error(status: int, headers: dict[str, str], body: bytes, codes: set[str], what: str) -> str:
    assert status < 500, f"{what}: HTTP {status} (a server error) {body[:300]!r}"
    assert 400 <= status < 500, f"{what}: HTTP {status}, expected a 4xx {body[:300]!r}"
    assert "json" in headers.get("content-type", ""), f"{what}: Content-Type {headers.get('content-type')!r}"
    try:
        document = json.loads(body)
        code = document["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise AssertionError(f"{what}: not an errors document: {body[:300]!r}") from None
    assert code in codes, f"{what}: code {code!r}, expected one of {sorted(codes)}"
    return str(code)


@pytest.mark.parametrize("path,codes", [pytest.param(p, c, id=i) for i, p, c in GET_CASES])
def test_hostile_get(path: str, codes: set[str], guarded: Daemon) -> None:
    status, headers, body = http_request(guarded.url + path)
    _assert_json_error(status, headers, body, codes, f"GET {path}")


@pytest.mark.parametrize(
    "path,codes", [pytest.param(p, c, id=i) for i, p, c in NAME_CASES[:8] + DIGEST_CASES[:4] + UPSTREAM_CASES[:3]]
)
def test_hostile_head(path: str, codes: set[str], guarded: Daemon) -> None:
    status, headers, body = http_request(guarded.url + path, "HEAD")
    assert 400 <= status < 500, f"HEAD {path}: HTTP {status}"
    assert body == b""


@pytest.mark.parametrize("method,path", [pytest.param(m, p, id=f"{m}-{i}") for i, (m, p) in enumerate(PUSH_CASES)])
def test_push_and_delete_are_unsupported(
    method: str, path: str, guarded: Daemon, ocitest_images: dict[str, Image]
) -> None:
    body: bytes | None = None
    headers: dict[str, str] = {}
    if method in ("PUT", "PATCH", "POST"):
        if "/manifests/" in path:
            image = ocitest_images["oci"]
            body = image.manifest_bytes
            headers["Content-Type"] = image.manifest_media_type
        else:
            body = b"x" * 1024
            headers["Content-Type"] = "application/octet-stream"
    status, response_headers, response_body = http_request(guarded.url + path, method, headers=headers, body=body)
    if method == "GET":
        _assert_json_error(status, response_headers, response_body, PUSH_GET_UPLOAD, f"{method} {path}")
        return
    assert status == 405, f"{method} {path}: HTTP {status}, expected 405 {response_body[:300]!r}"
    _assert_json_error(status, response_headers, response_body, {"UNSUPPORTED"}, f"{method} {path}")


def test_garbage_on_the_socket_does_not_hurt(guarded: Daemon) -> None:
    """
    A TLS ClientHello (what skopeo sends first to an "insecure" registry),
    a bad request line and a truncated request: the daemon answers or closes
    and keeps serving.
    """
    payloads = [
        bytes.fromhex("160301") + b"\x00\x2f\x01\x00\x00\x2b\x03\x03" + b"\x00" * 40,
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nshort",
        b"GET /v2/" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
            except OSError:
                pass
    status, _, _ = http_request(guarded.url + "/v2/")
    assert status == 200


def test_tls_client_hello_is_answered_promptly(guarded: Daemon) -> None:
    """
    skopeo and podman with --tls-verify=false try HTTPS first and fall back
    to HTTP only when the handshake fails: a server that waits for a line
    ending in the binary ClientHello stalls every such client for its 10 s
    TLS handshake timeout.  (docker-registry answers at once.)
    """
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as s:
        try:
            with context.wrap_socket(s, server_hostname="127.0.0.1"):
                raise AssertionError("a TLS handshake succeeded on the plain-HTTP port")
        except (ssl.SSLError, ConnectionError):
            pass
        except TimeoutError:
            raise AssertionError(
                "the daemon never answered a TLS ClientHello (skopeo --src-tls-verify=false "
                "waits 10 s for this on every run)"
            ) from None
    assert time.monotonic() - started < 3.0
