"""
The processes a benchmark runs against, all on 127.0.0.1:

    upstream (docker-registry, seeded)
      ├─ hop "ocicache"      <- ocicache (twistd -n ocicache), docker.io upstream
      │                         (plain HTTP, and HTTPS too when asked)
      ├─ hop "ocicache-workers-auto" <- ocicache with [server] workers = "auto",
      │                         when --workers asks for it (one hop per setting)
      ├─ hop "distribution"  <- docker-registry in proxy mode (proxy.remoteurl)
      └─ hop "distribution-tls" <- the same over HTTPS (its own instance)

    nginx (sendfile), serving the blob files ocicache stored: the
    physical-limit reference

Every HTTPS server uses one self-signed certificate for 127.0.0.1
(L{Rig.certificate}), and the clients trust exactly that one.

Each mirror gets its own counting hop (L{ocitest.hop.Hop}), so the
upstream requests and bytes of one never mix with the other's.  Every
L{Rig.mirror} call starts a mirror with a fresh, empty cache; stopping it
removes that cache (its log stays in the work directory).

Everything started here is stopped by L{Rig.close}, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from ocitest import free_port, log_tail, require_binary, spawn, stop_process, wait_for, wait_for_http
from ocitest.containerd import Containerd
from ocitest.daemon import Daemon, Upstream, write_config
from ocitest.hop import Hop
from ocitest.images import MEDIA, Blob, Image, big_layer, host_arch, sha256_digest
from ocitest.registry import Registry

from .report import workers_label
from .server_procs import process_start, wait_workers_ready

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = [
    "KINDS",
    "Mirror",
    "Nginx",
    "Rig",
    "ensure_installed",
    "parse_workers",
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
    "nginx": "nginx",
    "openssl": "openssl",
}

Log = Callable[[str], None]

MAX_WORKERS = 256
"""The largest C{[server] workers} the daemon accepts."""


def parse_workers(text: str) -> tuple[str, ...]:
    """
    The C{[server] workers} settings of C{--workers}: a comma-separated
    list of C{auto} and counts from 1 to L{MAX_WORKERS}, none twice, in
    the order given.  Raises C{ValueError} with a one-line reason.
    """
    settings: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if item != "auto" and not (item.isascii() and item.isdigit() and 1 <= int(item) <= MAX_WORKERS):
            raise ValueError(f"{item[:20]!r} is not a worker count (1 to {MAX_WORKERS}) or auto")
        setting = item if item == "auto" else str(int(item))
        if setting in settings:
            raise ValueError(f"{setting} is given twice")
        settings.append(setting)
    return tuple(settings)


def _which(program: str) -> str | None:
    # nginx is in /usr/sbin, not on every user's PATH.
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def make_certificate(directory: str) -> tuple[str, str]:
    """
    A self-signed RSA certificate for C{IP:127.0.0.1} and its key, in
    C{directory}; returns C{(cert.pem, key.pem)}.
    """
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def wait_for_https(url: str, cafile: str, timeout: float, proc: subprocess.Popen[bytes] | None,
                   log: str, what: str) -> None:
    """
    Poll C{url} over HTTPS, trusting only C{cafile}, until it answers 200.
    """
    context = ssl.create_default_context(cafile=cafile)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (OSError, urllib.error.URLError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not answer {url} within {timeout}s ({last})\n{log_tail(log)}")
        time.sleep(0.05)


def ensure_installed(log: Log, lean: Mapping[str, str] | None = None) -> list[str]:
    """
    C{apt-get install -y} the Debian packages whose programs are missing
    (nothing at all when every program is on PATH); returns what it
    installed.  C{lean} maps more programs to packages installed with
    C{--no-install-recommends} (Ceph's recommends pull in its whole
    dashboard stack).
    """
    lean = dict(lean or {})
    missing = sorted({pkg for prog, pkg in REQUIRED.items() if _which(prog) is None})
    missing_lean = sorted({pkg for prog, pkg in lean.items() if _which(prog) is None} - set(missing))
    if not missing and not missing_lean:
        return []
    if os.geteuid() != 0:
        raise RuntimeError(
            "missing programs; install them with: apt-get install -y --no-install-recommends "
            + " ".join(missing + missing_lean)
        )
    log(f"installing {' '.join(missing + missing_lean)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=900,
                   stdout=sys.stderr, stderr=sys.stderr)
    if missing:
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env, timeout=1800,
                       stdout=sys.stderr, stderr=sys.stderr)
    if missing_lean:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing_lean], check=True,
                       env=env, timeout=1800, stdout=sys.stderr, stderr=sys.stderr)
    still = sorted(prog for prog in {**REQUIRED, **lean} if _which(prog) is None)
    if still:
        raise RuntimeError(f"still missing after apt-get install: {', '.join(still)}")
    return missing + missing_lean


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


class TlsRegistry(Registry):
    """
    docker-registry (in proxy mode) serving HTTPS (C{http.tls}) with the
    given certificate.
    """

    def __init__(self, workdir: str, proxy_remote: str, cert: str, key: str) -> None:
        super().__init__(workdir, proxy_remote=proxy_remote)
        self.cert = cert
        self.key = key

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def config_text(self) -> str:
        addr = f"  addr: 127.0.0.1:{self.port}\n"
        text = super().config_text()
        assert addr in text
        return text.replace(addr, addr + f"  tls:\n    certificate: {self.cert}\n    key: {self.key}\n")

    def start(self, timeout: float = 20.0) -> TlsRegistry:
        binary = require_binary("docker-registry")
        os.makedirs(self.storage, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        self.proc = spawn([binary, "serve", self.config_path], self.log_path, self.workdir)
        try:
            wait_for_https(self.url + "/v2/", self.cert, timeout, self.proc, self.log_path, "docker-registry (TLS)")
        except BaseException:
            self.stop()
            raise
        return self


NGINX_CONF = """\
daemon off;
{user}worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {work}/tmp/body;
  proxy_temp_path {work}/tmp/proxy;
  fastcgi_temp_path {work}/tmp/fastcgi;
  uwsgi_temp_path {work}/tmp/uwsgi;
  scgi_temp_path {work}/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 600s;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location = /v2/ {{ default_type application/json; return 200 '{{}}'; }}
{locations}  }}
}}
"""


class Nginx:
    """
    nginx serving files with C{sendfile on}, as the reference for what
    this disk and this loopback can do: C{files} maps a URL path (the same
    C{/v2/<repo>/blobs/<digest>} the mirrors answer) to a file, each an
    exact C{location} with an C{alias}.  Its own config, pid file, logs
    and temp paths in C{workdir}; C{daemon off}, so it is a child of the
    bench like everything else.
    """

    def __init__(self, workdir: str, files: dict[str, str]) -> None:
        self.workdir = os.path.abspath(workdir)
        self.files = dict(files)
        self.port = free_port()
        self.config_path = os.path.join(self.workdir, "nginx.conf")
        self.log_path = os.path.join(self.workdir, "nginx.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("nginx is not running")
        return self.proc.pid

    def config_text(self) -> str:
        locations = "".join(
            f"    location = {path} {{ alias {file}; default_type application/octet-stream; }}\n"
            for path, file in self.files.items()
        )
        # Started as root, nginx would switch its workers to "nobody", who
        # cannot read the bench's private work dir.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        return NGINX_CONF.format(user=user, work=self.workdir, port=self.port, locations=locations)

    def start(self, timeout: float = 20.0) -> Nginx:
        binary = _which("nginx")
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
        os.makedirs(os.path.join(self.workdir, "tmp"), exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        # -e: the error log before the config is read (else /var/log/nginx).
        self.proc = spawn([binary, "-e", os.path.join(self.workdir, "error.log"), "-p", self.workdir,
                           "-c", self.config_path], self.log_path, self.workdir)
        try:
            wait_for_http(self.url + "/v2/", timeout=timeout, proc=self.proc,
                          log=os.path.join(self.workdir, "error.log"), what="nginx")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # SIGTERM: nginx's fast shutdown; the master stops its workers.
        stop_process(self.proc, grace=10.0)
        self.proc = None


_ACCESS_GET = re.compile(r"\[ocicache\.access#\w+\] GET (\S+) .* w(\d+)$", re.MULTILINE)
"""An answer in ocicache's access log, with its path and (with workers) the worker that gave it."""


class Mirror:
    """
    One running mirror (ocicache or distribution) with a fresh cache, and
    the hop it pulls through.
    """

    def __init__(self, kind: str, workdir: str, hop: Hop, tls: tuple[str, str] | None = None,
                 workers: str = "1") -> None:
        self.kind = kind
        self.workdir = workdir
        self.hop = hop
        self.tls = tls
        """C{(cert, key)}: ocicache listens on HTTPS too (L{tls_url}); distribution on HTTPS only."""
        self.workers = workers
        """ocicache's C{[server] workers} (L{parse_workers}); C{"1"} for distribution."""
        self.worker_pids: list[int] = []
        """With workers other than 1: ocicache's worker processes, once all were ready."""
        self._daemon: Daemon | None = None
        self._registry: Registry | None = None
        self._tls_port = 0
        self.cache_dir = ""

    def start(self) -> Mirror:
        os.makedirs(self.workdir, exist_ok=True)
        if self.kind == "ocicache":
            port = free_port()
            self.cache_dir = os.path.join(self.workdir, "cache")
            # A stop with slow clients still connected should not wait
            # out the default 30 s drain.
            server_extra: dict[str, object] = {"drain_timeout": "1s"}
            if self.workers != "1":
                # Only when asked: a tree from before the key still runs the bench.
                server_extra["workers"] = self.workers if self.workers == "auto" else int(self.workers)
            if self.tls is not None:
                self._tls_port = free_port()
                cert, key = self.tls
                server_extra["listen"] = [
                    f"tcp:{port}:interface=127.0.0.1",
                    f"ssl:{self._tls_port}:privateKey={key}:certKey={cert}:interface=127.0.0.1",
                ]
            config = write_config(
                os.path.join(self.workdir, "ocicache.toml"),
                port=port,
                cache_dir=self.cache_dir,
                upstreams=[Upstream("docker.io", self.hop.url, default=True)],
                tag_ttl="5m",
                server_extra=server_extra,
            )
            self._daemon = Daemon(config, port=port, workdir=self.workdir, cache_dir=self.cache_dir)
            self._daemon.start(timeout=60)
            if self.workers != "1":
                daemon = self._daemon
                self.worker_pids = wait_workers_ready(self.pid, daemon.log_text, 60, lambda: daemon.running)
            if self.tls is not None:
                wait_for_https(self.tls_url + "/v2/", self.tls[0], 30, self._daemon.proc, self.log_path,
                               "ocicache (TLS)")
        elif self.kind == "distribution":
            if self.tls is not None:
                self._registry = TlsRegistry(self.workdir, self.hop.url, *self.tls)
            else:
                self._registry = Registry(self.workdir, proxy_remote=self.hop.url)
            self.cache_dir = self._registry.storage
            self._registry.start(timeout=60)
        else:
            raise ValueError(self.kind)
        return self

    @property
    def label(self) -> str:
        """
        The mirror's name in logs: the kind, and ocicache's workers setting
        when it is not 1 (with the count "auto" came to).
        """
        if self.workers == "1":
            return self.kind
        count = f" ({len(self.worker_pids)})" if self.workers == "auto" and self.worker_pids else ""
        return f"{self.kind}, {workers_label(self.workers)}{count}"

    @property
    def port(self) -> int:
        """
        The plain-HTTP port (ocicache) or the only one (distribution).
        """
        if self._daemon is not None:
            return self._daemon.port
        assert self._registry is not None
        return self._registry.port

    @property
    def url(self) -> str:
        if self._daemon is not None:
            return self._daemon.url
        assert self._registry is not None
        return self._registry.url

    @property
    def tls_url(self) -> str:
        """
        The HTTPS address: ocicache's C{ssl:} listener, or distribution's
        only one.
        """
        if self.tls is None:
            raise RuntimeError(f"{self.kind} was started without TLS")
        if self._daemon is not None:
            return f"https://127.0.0.1:{self._tls_port}"
        return self.url

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

    def log_size(self) -> int:
        """
        How long the log is now: where L{answers_by_worker} starts reading.
        """
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def answers_by_worker(self, path: str, since: int, expected: int, timeout: float = 10.0) -> list[int]:
        """
        ocicache's answers to C{GET path} logged after offset C{since} of its
        log, by the worker that gave them (the access log's C{w<index>}),
        as a count per worker index; waits up to C{timeout} seconds for
        C{expected} of them (a line is written once its response is done).
        """
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
            workers = [int(m.group(2)) for m in _ACCESS_GET.finditer(text) if m.group(1) == path]
            if len(workers) >= expected or time.monotonic() > deadline:
                counts = [0] * max(len(self.worker_pids), max(workers, default=-1) + 1)
                for index in workers:
                    counts[index] += 1
                return counts
            time.sleep(0.05)

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
                started = {pid: start for pid in self.worker_pids if (start := process_start(pid)) is not None}
                try:
                    self._daemon.stop(grace=10)
                finally:
                    _kill_leftover_workers(started)
            if self._registry is not None:
                self._registry.stop()
        finally:
            if self.cache_dir:
                shutil.rmtree(self.cache_dir, ignore_errors=True)


def _kill_leftover_workers(started: dict[int, int]) -> None:
    """
    SIGKILL the worker processes a main process left behind (its own
    SIGTERM drains them; a main process killed after its grace period
    cannot), each by its pid, and only while that pid is still the process
    that started at the recorded time (L{process_start}), not a new one.
    """
    for pid, start in started.items():
        if process_start(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue


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
        self._nginxes: list[Nginx] = []
        self._certificate: tuple[str, str] | None = None
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

    def certificate(self) -> tuple[str, str]:
        """
        The run's self-signed certificate for 127.0.0.1 and its key
        (made on first use).
        """
        if self._certificate is None:
            self._certificate = make_certificate(os.path.join(self.workdir, "tls"))
        return self._certificate

    def mirror(self, kind: str, tls: bool = False, workers: str = "1") -> Mirror:
        """
        A freshly started mirror of C{kind} with an empty cache; with
        C{tls}, ocicache also listens on HTTPS and distribution only does
        (through its own hop, so its upstream traffic is counted apart);
        C{workers}, ocicache's C{[server] workers}, each setting other than
        1 with a hop of its own too.
        """
        hop_key = f"{kind}-tls" if tls and kind == "distribution" else kind
        if workers != "1":
            hop_key += f"-workers-{workers}"
        if hop_key not in self.hops:
            assert self.upstream is not None
            self.hops[hop_key] = Hop(self.upstream.url).start()
        hop = self.hops[hop_key]
        hop.reset()
        mirror = Mirror(kind, self._next_dir(hop_key), hop, self.certificate() if tls else None, workers)
        self._mirrors.append(mirror)
        mirror.start()
        return mirror

    def nginx(self, files: dict[str, str]) -> Nginx:
        """
        A started L{Nginx} serving C{files} (URL path -> file).
        """
        server = Nginx(self._next_dir("nginx"), files)
        self._nginxes.append(server)
        server.start()
        return server

    def stop_nginx(self, server: Nginx) -> None:
        try:
            server.stop()
        finally:
            if server in self._nginxes:
                self._nginxes.remove(server)

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
        for server in list(self._nginxes):
            try:
                self.stop_nginx(server)
            except BaseException as e:  # keep stopping the rest
                errors.append(e)
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
