"""
A private containerd for tests, and C{ctr} helpers.

    c = Containerd("/tmp/work/ctrd").start()
    hosts = write_hosts_dir("/tmp/work/hosts", "docker.io", "http://127.0.0.1:PORT")
    c.pull("docker.io/library/ocitest-oci:v1", hosts_dir=hosts)
    c.image_digest("docker.io/library/ocitest-oci:v1")   # the pulled target
    c.content_get(digest)                                # bytes
    c.stop()

Each instance has its own C{root}, C{state}, gRPC socket and config file
(CRI disabled, the C{opt} plugin's directory kept inside C{workdir}), so
several can run at once and none touches a system containerd.

The mirror is configured through a hosts directory (C{ctr --hosts-dir}):
C{DIR/<registry host>/hosts.toml} with a C{[host."http://..."]} entry.  The
C{http://} scheme there is enough for plain HTTP (no C{--plain-http}), and
containerd sends C{?ns=<registry host>} to a mirror host.  The C{server}
line points at 127.0.0.1:1 so a fall-back to the "real" registry fails fast
instead of leaving the machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from typing import Any

from . import log_tail, require_binary, spawn, stop_process, wait_for

__all__ = ["Containerd", "CtrError", "write_hosts_dir", "hosts_toml"]


class CtrError(RuntimeError):
    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(
            f"{' '.join(args)} exited with {returncode}\n--- stdout ---\n{stdout[-4000:]}\n"
            f"--- stderr ---\n{stderr[-4000:]}"
        )
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def hosts_toml(mirror_url: str, server: str = "http://127.0.0.1:1",
               capabilities: tuple[str, ...] = ("pull", "resolve"),
               header: dict[str, str] | None = None) -> str:
    """
    A hosts.toml for one mirror host; C{header} adds its
    C{[host."…".header]} table (sent with every request to the mirror,
    e.g. C{{"Authorization": "Bearer …"}}).
    """
    caps = ", ".join(f'"{c}"' for c in capabilities)
    text = (
        f'server = "{server}"\n'
        "\n"
        f'[host."{mirror_url.rstrip("/")}"]\n'
        f"  capabilities = [{caps}]\n"
    )
    if header:
        text += f'\n[host."{mirror_url.rstrip("/")}".header]\n'
        text += "".join(f"  {name} = {json.dumps(value)}\n" for name, value in header.items())
    return text


def write_hosts_dir(directory: str, registry_host: str, mirror_url: str, **kwargs: object) -> str:
    """
    Write C{directory}/C{registry_host}/hosts.toml sending pulls of
    C{registry_host} to C{mirror_url}; returns C{directory}.
    """
    path = os.path.join(directory, registry_host)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "hosts.toml"), "w") as f:
        f.write(hosts_toml(mirror_url, **kwargs))  # type: ignore[arg-type]
    return directory


class Containerd:
    def __init__(self, workdir: str, snapshotter: str | None = None, namespace: str = "ocitest") -> None:
        self.workdir = os.path.abspath(workdir)
        self.root = os.path.join(self.workdir, "root")
        self.state = os.path.join(self.workdir, "state")
        self.address = os.path.join(self.workdir, "c.sock")
        self.config_path = os.path.join(self.workdir, "config.toml")
        self.log_path = os.path.join(self.workdir, "containerd.log")
        self.snapshotter = snapshotter
        self.namespace = namespace
        self.proc: subprocess.Popen[bytes] | None = None
        if len(self.address) > 100:
            # unix socket paths are limited to 108 bytes
            self.address = os.path.join(tempfile.mkdtemp(prefix="ocitest-ctr-"), "c.sock")

    def config_text(self) -> str:
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.root}"',
                f'state = "{self.state}"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "",
                "[grpc]",
                f'  address = "{self.address}"',
                "",
                "[ttrpc]",
                f'  address = "{self.address}.ttrpc"',
                "",
                "[debug]",
                '  address = ""',
                '  level = "info"',
                "",
                "[metrics]",
                '  address = ""',
                "",
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{os.path.join(self.workdir, "opt")}"',
                "",
            ]
        )

    def start(self, timeout: float = 20.0) -> Containerd:
        binary = require_binary("containerd")
        require_binary("ctr")
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        self.proc = spawn([binary, "--config", self.config_path], self.log_path, self.workdir)
        try:
            def ready() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"containerd exited with {self.proc.returncode}\n{log_tail(self.log_path)}"
                    )
                if not os.path.exists(self.address):
                    return False
                r = subprocess.run(
                    ["ctr", "--address", self.address, "version"],
                    capture_output=True, timeout=10,
                )
                return r.returncode == 0

            wait_for(ready, timeout, interval=0.1, what=f"containerd on {self.address}")
        except BaseException as e:
            self.stop()
            if isinstance(e, TimeoutError):
                raise TimeoutError(f"{e}\n--- {self.log_path} ---\n{log_tail(self.log_path)}") from None
            raise
        if self.snapshotter is None:
            self.snapshotter = self._pick_snapshotter()
        return self

    def _pick_snapshotter(self) -> str:
        """
        overlayfs if this kernel lets containerd mount it here, else native.
        """
        out = self.ctr("plugins", "ls").stdout
        ok = {m.group(1) for m in re.finditer(r"io\.containerd\.snapshotter\.v1\s+(\S+)\s+\S+\s+ok", out)}
        if "overlayfs" in ok:
            return "overlayfs"
        return "native"

    def stop(self) -> None:
        stop_process(self.proc, grace=10.0)
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- ctr ------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0,
            namespace: str | None = None, text: bool = True) -> subprocess.CompletedProcess[Any]:
        cmd = ["ctr", "--address", self.address, "--namespace", namespace or self.namespace, *args]
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, text=text)
        if check and r.returncode != 0:
            out = r.stdout if text else r.stdout.decode("utf-8", "replace")
            err = r.stderr if text else r.stderr.decode("utf-8", "replace")
            raise CtrError(cmd, r.returncode, out, err)
        return r

    def pull(
        self,
        ref: str,
        hosts_dir: str | None = None,
        platform: str | None = None,
        all_platforms: bool = False,
        unpack: bool = True,
        plain_http: bool = False,
        namespace: str | None = None,
        extra: tuple[str, ...] = (),
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[Any]:
        """
        C{ctr images pull} (fetch and unpack) or, with C{unpack=False},
        C{ctr content fetch} (fetch only; there is no C{--skip-unpack} in
        containerd 1.6).
        """
        args: list[str] = ["images", "pull"] if unpack else ["content", "fetch"]
        if hosts_dir:
            args += ["--hosts-dir", hosts_dir]
        if plain_http:
            args.append("--plain-http")
        if platform:
            args += ["--platform", platform]
        if all_platforms:
            args.append("--all-platforms")
        if unpack and self.snapshotter:
            args += ["--snapshotter", self.snapshotter]
        args += list(extra)
        args.append(ref)
        return self.ctr(*args, timeout=timeout, namespace=namespace)

    def images(self, namespace: str | None = None) -> dict[str, dict[str, str]]:
        """
        C{ctr images ls}: ref -> {"type", "digest", "size", "platforms"}.
        """
        out = self.ctr("images", "ls", namespace=namespace).stdout
        result: dict[str, dict[str, str]] = {}
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 3:
                continue
            # REF TYPE DIGEST SIZE(2 fields: "1.0 MiB") PLATFORMS LABELS
            result[fields[0]] = {
                "type": fields[1],
                "digest": fields[2],
                "size": " ".join(fields[3:5]) if len(fields) >= 5 else "",
                "platforms": fields[5] if len(fields) > 5 else "",
            }
        return result

    def image_digest(self, ref: str, namespace: str | None = None) -> str:
        images = self.images(namespace)
        if ref not in images:
            raise KeyError(f"{ref} not in {sorted(images)}")
        return str(images[ref]["digest"])

    def image_media_type(self, ref: str, namespace: str | None = None) -> str:
        return str(self.images(namespace)[ref]["type"])

    def content_get(self, digest: str, namespace: str | None = None) -> bytes:
        r = self.ctr("content", "get", digest, namespace=namespace, text=False)
        return bytes(r.stdout)

    def content_digests(self, namespace: str | None = None) -> set[str]:
        """
        Digests in the content store (C{ctr content ls -q}).
        """
        out = self.ctr("content", "ls", "-q", namespace=namespace).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def check(self, ref: str, namespace: str | None = None) -> str:
        """
        C{ctr images check}'s line for C{ref} (includes "complete" when all
        content for the platform is present).
        """
        out: str = self.ctr("images", "check", namespace=namespace).stdout
        for line in out.splitlines():
            if line.split()[:1] == [ref]:
                return line
        raise KeyError(ref)

    def snapshots(self, namespace: str | None = None) -> list[str]:
        args = ["snapshots"]
        if self.snapshotter:
            args += ["--snapshotter", self.snapshotter]
        out = self.ctr(*args, "ls", namespace=namespace).stdout
        return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def wait_socket_gone(path: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
