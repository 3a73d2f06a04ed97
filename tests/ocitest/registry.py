"""
The upstream: Debian's C{docker-registry} (distribution 2.8) on loopback,
and a small plain-HTTP pusher for L{ocitest.images}.

    reg = Registry("/tmp/work/upstream")
    reg.start()                      # waits for GET /v2/ -> 200
    push_image(reg.url, image)       # blobs, children, then the manifest
    reg.stop()

C{Registry(..., proxy_remote="http://...")} starts it as a pull-through
proxy of another registry instead (for benchmarks).

The pusher speaks the distribution API directly (skopeo 1.9 drops Docker
media types when copying from an C{oci:} layout): for each blob C{HEAD};
if missing, C{POST /v2/<name>/blobs/uploads/} then a monolithic
C{PUT <Location>&digest=...} streamed from the blob's file with
C{Content-Length}; then each manifest (an index's children first, by digest)
with C{PUT /v2/<name>/manifests/<ref>} and its exact media type.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import urllib.parse
from collections.abc import Iterable
from typing import BinaryIO

from . import free_port, log_tail, require_binary, spawn, stop_process, wait_for_http
from .images import Blob, Image

__all__ = ["Registry", "PushError", "push_blob", "push_manifest", "push_image", "seed_registry"]


class PushError(RuntimeError):
    pass


class Registry:
    """
    A C{docker-registry serve} process with filesystem storage in
    C{workdir}/storage, listening on 127.0.0.1:C{port}, logging to
    C{workdir}/registry.log.
    """

    def __init__(
        self,
        workdir: str,
        port: int | None = None,
        proxy_remote: str | None = None,
        log_level: str = "info",
    ) -> None:
        self.workdir = os.path.abspath(workdir)
        self.port = port or free_port()
        self.proxy_remote = proxy_remote
        self.log_level = log_level
        self.storage = os.path.join(self.workdir, "storage")
        self.config_path = os.path.join(self.workdir, "registry.yml")
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.images: dict[str, Image] = {}
        """What L{seed} pushed, by short name."""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def config_text(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            f"  level: {self.log_level}",
            "  formatter: text",
            "  accesslog:",
            f"    disabled: {'true' if self.log_level in ('warn', 'error', 'fatal', 'panic') else 'false'}",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "  cache:",
            "    blobdescriptor: inmemory",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: ocitest-not-a-secret",
            "  headers:",
            "    X-Content-Type-Options: [nosniff]",
        ]
        if self.proxy_remote:
            lines += ["proxy:", f"  remoteurl: {self.proxy_remote}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> Registry:
        binary = require_binary("docker-registry")
        os.makedirs(self.storage, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        self.proc = spawn([binary, "serve", self.config_path], self.log_path, self.workdir)
        try:
            wait_for_http(self.url + "/v2/", timeout=timeout, proc=self.proc,
                          log=self.log_path, what="docker-registry")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace=10.0)
        self.proc = None

    def seed(self, images: dict[str, Image]) -> None:
        """
        Push every image (skipping blobs already there) and remember them.
        """
        for image in images.values():
            push_image(self.url, image)
        self.images.update(images)

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the pusher ---------------------------------------------------------


def _connection(base_url: str, timeout: float = 120.0) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// upstreams are supported here, not {base_url!r}")
    return http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout, blocksize=1 << 20
    )


def _roundtrip(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    body: bytes | BinaryIO | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, target, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def _target_from_location(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    target = parts.path
    if parts.query:
        target += "?" + parts.query
    return target


def push_blob(base_url: str, repo: str, blob: Blob, conn: http.client.HTTPConnection | None = None) -> bool:
    """
    Upload one blob unless C{HEAD} finds it; returns whether it uploaded.
    """
    own = conn is None
    conn = conn or _connection(base_url)
    try:
        status, _, _ = _roundtrip(conn, "HEAD", f"/v2/{repo}/blobs/{blob.digest}")
        if status == 200:
            return False
        status, headers, body = _roundtrip(
            conn, "POST", f"/v2/{repo}/blobs/uploads/", body=b"", headers={"Content-Length": "0"}
        )
        if status != 202 or "location" not in headers:
            raise PushError(f"POST upload for {repo}: HTTP {status} {body[:500]!r}")
        target = _target_from_location(headers["location"])
        target += ("&" if "?" in target else "?") + "digest=" + urllib.parse.quote(blob.digest, safe=":")
        with blob.open() as f:
            status, _, body = _roundtrip(
                conn,
                "PUT",
                target,
                body=f,
                headers={
                    "Content-Length": str(blob.size),
                    "Content-Type": "application/octet-stream",
                },
            )
        if status != 201:
            raise PushError(f"PUT blob {blob.digest} to {repo}: HTTP {status} {body[:500]!r}")
        return True
    finally:
        if own:
            conn.close()


def push_manifest(
    base_url: str,
    repo: str,
    reference: str,
    manifest_bytes: bytes,
    media_type: str,
    conn: http.client.HTTPConnection | None = None,
) -> str:
    """
    PUT one manifest; returns the registry's C{Docker-Content-Digest}.
    """
    own = conn is None
    conn = conn or _connection(base_url)
    try:
        status, headers, body = _roundtrip(
            conn,
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            body=manifest_bytes,
            headers={"Content-Type": media_type, "Content-Length": str(len(manifest_bytes))},
        )
        if status != 201:
            raise PushError(f"PUT manifest {repo}:{reference} ({media_type}): HTTP {status} {body[:1000]!r}")
        return headers.get("docker-content-digest", "")
    finally:
        if own:
            conn.close()


def push_image(base_url: str, image: Image, repo: str | None = None, tag: str | None = None) -> None:
    """
    Push C{image} (blobs, an index's children by digest, then the top
    manifest by tag) to C{repo} (default C{image.repo}) under C{tag}
    (default C{image.tag}; by digest if neither).
    """
    repo = repo or image.repo
    conn = _connection(base_url)
    try:
        for blob in image.all_blobs():
            push_blob(base_url, repo, blob, conn)
        for manifest in image.manifests():
            if manifest is image:
                reference = tag or image.tag or image.manifest_digest
            else:
                reference = manifest.manifest_digest
            digest = push_manifest(
                base_url, repo, reference, manifest.manifest_bytes, manifest.manifest_media_type, conn
            )
            if digest and digest != manifest.manifest_digest:
                raise PushError(
                    f"registry stored {repo}:{reference} as {digest}, expected {manifest.manifest_digest}"
                )
    finally:
        conn.close()


def seed_registry(base_url: str, images: Iterable[Image]) -> None:
    for image in images:
        push_image(base_url, image)
