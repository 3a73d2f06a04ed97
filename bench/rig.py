"""
The processes a benchmark runs against, all on 127.0.0.1:

    upstream (docker-registry, seeded)
      ├─ hop "ocicache"      <- ocicache (twistd -n ocicache), docker.io upstream
      └─ hop "distribution"  <- docker-registry in proxy mode (proxy.remoteurl)

Each mirror gets its own counting hop (L{ocitest.hop.Hop}), so the
upstream requests and bytes of one never mix with the other's.  Every
L{Rig.mirror} call starts a mirror with a fresh, empty cache; stopping it
removes that cache (its log stays in the work directory).

Everything started here is stopped by L{Rig.close}, whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from ocitest import free_port, log_tail, wait_for
from ocitest.containerd import Containerd
from ocitest.daemon import Daemon, Upstream, write_config
from ocitest.hop import Hop
from ocitest.images import MEDIA, Blob, Image, big_layer, host_arch, sha256_digest
from ocitest.registry import Registry

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = [
    "KINDS",
    "Mirror",
    "Rig",
    "ensure_installed",
    "layered_image",
]

MiB = 1 << 20

KINDS = ("ocicache", "distribution")
"""The two servers compared, in the order tables show them."""

# program -> Debian package
REQUIRED = {
    "docker-registry": "docker-registry",
    "wrk": "wrk",
    "containerd": "containerd",
    "ctr": "containerd",
    "curl": "curl",
}

Log = Callable[[str], None]


def ensure_installed(log: Log) -> list[str]:
    """
    C{apt-get install -y} the Debian packages whose programs are missing
    (nothing at all when every program is on PATH); returns what it
    installed.
    """
    missing = sorted({pkg for prog, pkg in REQUIRED.items() if shutil.which(prog) is None})
    if not missing:
        return []
    if os.geteuid() != 0:
        raise RuntimeError(
            f"missing programs; install them with: apt-get install -y {' '.join(missing)}"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=900,
                   stdout=sys.stderr, stderr=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env, timeout=1800,
                   stdout=sys.stderr, stderr=sys.stderr)
    still = sorted(prog for prog in REQUIRED if shutil.which(prog) is None)
    if still:
        raise RuntimeError(f"still missing after apt-get install: {', '.join(still)}")
    return missing


def layered_image(repo: str, tag: str, layer_mib: tuple[int, ...], seed: str = "bench") -> Image:
    """
    A single-platform OCI image of several uncompressed tar layers of
    C{layer_mib} MiB each (deterministic, generated once and cached on disk
    by L{ocitest.images.big_layer}), for C{ctr images pull}.
    """
    layers = [
        big_layer(f"{seed}/{repo}/{i}/{mib}", mib * MiB, MEDIA.OCI_LAYER)
        for i, mib in enumerate(layer_mib)
    ]
    arch = host_arch()
    created = "2023-11-14T22:13:20Z"
    config_obj: dict[str, object] = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {"Cmd": ["/bin/true"], "Labels": {"org.opencontainers.image.title": f"{repo}:{tag}"}},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created": created, "created_by": f"ocibench layer {i}"} for i in range(len(layers))],
    }
    if arch == "arm64":
        config_obj["variant"] = "v8"
    config = Blob.from_bytes(
        json.dumps(config_obj, sort_keys=True, separators=(",", ":")).encode(), MEDIA.OCI_CONFIG
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA.OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    data = json.dumps(manifest, indent=2).encode() + b"\n"
    platform = {"architecture": arch, "os": "linux"}
    return Image(
        repo=repo,
        tag=tag,
        manifest_bytes=data,
        manifest_media_type=MEDIA.OCI_MANIFEST,
        manifest_digest=sha256_digest(data),
        blobs=[config, *layers],
        platform=platform,
    )


class Mirror:
    """
    One running mirror (ocicache or distribution) with a fresh cache, and
    the hop it pulls through.
    """

    def __init__(self, kind: str, workdir: str, hop: Hop) -> None:
        self.kind = kind
        self.workdir = workdir
        self.hop = hop
        self._daemon: Daemon | None = None
        self._registry: Registry | None = None
        self.cache_dir = ""

    def start(self) -> Mirror:
        os.makedirs(self.workdir, exist_ok=True)
        if self.kind == "ocicache":
            port = free_port()
            self.cache_dir = os.path.join(self.workdir, "cache")
            config = write_config(
                os.path.join(self.workdir, "ocicache.toml"),
                port=port,
                cache_dir=self.cache_dir,
                upstreams=[Upstream("docker.io", self.hop.url, default=True)],
                tag_ttl="5m",
                # A stop with slow clients still connected should not wait
                # out the default 30 s drain.
                server_extra={"drain_timeout": "1s"},
            )
            self._daemon = Daemon(config, port=port, workdir=self.workdir, cache_dir=self.cache_dir)
            self._daemon.start(timeout=60)
        elif self.kind == "distribution":
            self._registry = Registry(self.workdir, proxy_remote=self.hop.url)
            self.cache_dir = self._registry.storage
            self._registry.start(timeout=60)
        else:
            raise ValueError(self.kind)
        return self

    @property
    def url(self) -> str:
        if self._daemon is not None:
            return self._daemon.url
        assert self._registry is not None
        return self._registry.url

    @property
    def pid(self) -> int:
        proc = self._daemon.proc if self._daemon is not None else (
            self._registry.proc if self._registry is not None else None)
        if proc is None:
            raise RuntimeError(f"{self.kind} is not running")
        return proc.pid

    @property
    def running(self) -> bool:
        proc = self._daemon.proc if self._daemon is not None else (
            self._registry.proc if self._registry is not None else None)
        return proc is not None and proc.poll() is None

    @property
    def log_path(self) -> str:
        if self._daemon is not None:
            return self._daemon.log_path
        if self._registry is not None:
            return self._registry.log_path
        return ""

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def blob_path(self, digest: str) -> str:
        algorithm, hex_ = digest.split(":", 1)
        if self.kind == "ocicache":
            return os.path.join(self.cache_dir, "blobs", algorithm, hex_[:2], hex_)
        return os.path.join(self.cache_dir, "docker", "registry", "v2", "blobs", algorithm, hex_[:2], hex_, "data")

    def wait_blob_stored(self, blob: Blob, timeout: float = 120.0) -> None:
        """
        Wait until the mirror holds the whole blob on disk (ocicache commits
        after verifying; distribution stores it in the background).
        """
        path = self.blob_path(blob.digest)

        def stored() -> bool:
            try:
                return os.path.getsize(path) == blob.size
            except OSError:
                return False

        wait_for(stored, timeout, interval=0.05, what=f"{self.kind} to store {blob.digest[:19]}")

    def stop(self) -> None:
        try:
            if self._daemon is not None:
                self._daemon.stop(grace=10)
            if self._registry is not None:
                self._registry.stop()
        finally:
            if self.cache_dir:
                shutil.rmtree(self.cache_dir, ignore_errors=True)


class Rig:
    """
    The upstream, the two hops, and the mirrors and containerds started
    on them.  L{close} stops all of it.
    """

    def __init__(self, workdir: str, log: Log) -> None:
        self.workdir = workdir
        self.log = log
        self.upstream: Registry | None = None
        self.hops: dict[str, Hop] = {}
        self.images: dict[str, Image] = {}
        self._mirrors: list[Mirror] = []
        self._containerds: list[Containerd] = []
        self._serial = 0

    def start(self, images: dict[str, Image]) -> Rig:
        os.makedirs(self.workdir, exist_ok=True)
        self.upstream = Registry(os.path.join(self.workdir, "upstream"))
        self.upstream.start(timeout=60)
        started = time.monotonic()
        self.upstream.seed(images)
        self.images = dict(images)
        self.log(f"upstream {self.upstream.url} seeded with {len(images)} images "
                 f"in {time.monotonic() - started:.1f}s")
        for kind in KINDS:
            self.hops[kind] = Hop(self.upstream.url).start()
        return self

    def _next_dir(self, stem: str) -> str:
        self._serial += 1
        return os.path.join(self.workdir, f"{self._serial:03d}-{stem}")

    def mirror(self, kind: str) -> Mirror:
        """
        A freshly started mirror of C{kind} with an empty cache.
        """
        hop = self.hops[kind]
        hop.reset()
        mirror = Mirror(kind, self._next_dir(kind), hop)
        self._mirrors.append(mirror)
        mirror.start()
        return mirror

    def stop_mirror(self, mirror: Mirror) -> None:
        try:
            mirror.stop()
        finally:
            if mirror in self._mirrors:
                self._mirrors.remove(mirror)

    def containerd(self) -> Containerd:
        """
        A freshly started containerd with an empty root.
        """
        ctrd = Containerd(self._next_dir("containerd"))
        self._containerds.append(ctrd)
        ctrd.start(timeout=60)
        return ctrd

    def stop_containerd(self, ctrd: Containerd) -> None:
        try:
            ctrd.stop()
        finally:
            if ctrd in self._containerds:
                self._containerds.remove(ctrd)
            shutil.rmtree(ctrd.workdir, ignore_errors=True)

    def close(self) -> None:
        """
        Stop everything, continuing past failures; raise the first one.
        """
        errors: list[BaseException] = []
        for ctrd in list(self._containerds):
            try:
                self.stop_containerd(ctrd)
            except BaseException as e:  # keep stopping the rest
                errors.append(e)
        for mirror in list(self._mirrors):
            try:
                self.stop_mirror(mirror)
            except BaseException as e:
                errors.append(e)
        for hop in self.hops.values():
            try:
                hop.stop()
            except BaseException as e:
                errors.append(e)
        if self.upstream is not None:
            try:
                self.upstream.stop()
            except BaseException as e:
                errors.append(e)
            self.upstream = None
        if errors:
            raise errors[0]
