"""
C{bench/run --files}: ocicache's C{/files/} against apt-cacher-ng, side by
side in one run (issue 21):

    nginx (a Debian repository made by dpkg-deb and apt-ftparchive;
      │    its access log counts every upstream request and byte)
      ├─ ocicache       [[files]] kind = "deb"
      └─ apt-cacher-ng  Remap-bench: /bench ; <nginx>

For each mirror, on an empty cache: C{clients} curl processes (one
keep-alive connection each) released at once download every package of
the set (the cold round: all of it is upstream only), then do it again
(the warm round).  Reported: upstream requests and bytes, wall time,
throughput (bytes delivered to all clients over the wall time), and the
mirror's peak resident memory (C{VmHWM}) after each round.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ocitest import free_port, require_binary, spawn, stop_process, wait_for_http
from ocitest.daemon import Daemon
from ocitest.packages import DebRepository, Nginx

__all__ = ["run_files"]

MiB = 1 << 20
CLIENTS = 16
PACKAGE_MIB = 10


@dataclass
class Round:
    mirror: str
    round: str
    wall_seconds: float
    delivered_bytes: int
    upstream_requests: int
    upstream_bytes: int
    peak_rss_mib: float
    errors: int

    @property
    def throughput_mib_s(self) -> float:
        return self.delivered_bytes / MiB / self.wall_seconds if self.wall_seconds else 0.0


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _upstream(access_log: Path) -> tuple[int, int]:
    """Requests and body bytes nginx logged so far (the combined format: C{"GET ..." status bytes})."""
    requests = sent = 0
    if access_log.exists():
        for line in access_log.read_text().splitlines():
            _, quote, rest = line.partition('" ')
            fields = rest.split()
            if quote and len(fields) >= 2 and fields[1].isdigit():
                requests += 1
                sent += int(fields[1])
    return requests, sent


def _round(urls: list[str], sizes: list[int], clients: int) -> tuple[float, int, int]:
    """All clients at once, each fetching every URL on one connection: (wall seconds, bytes, errors)."""
    command = ["curl", "-s", "-S", "--fail", "-w", "%{size_download}\\n"]
    for url in urls:
        command += ["-o", "/dev/null", url]
    started = time.monotonic()
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(clients)]
    delivered = errors = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        got = [int(line) for line in out.split()]
        delivered += sum(got)
        errors += (proc.returncode != 0) + sum(1 for have, want in zip(got, sizes, strict=False) if have != want)
    return time.monotonic() - started, delivered, errors


class _AptCacherNg:
    """apt-cacher-ng on loopback with its own config, cache and log dirs, remapping C{/bench} to C{upstream}."""

    def __init__(self, workdir: Path, upstream: str) -> None:
        self.workdir = workdir
        self.port = _port_below_32768()
        self.upstream = upstream
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> _AptCacherNg:
        binary = require_binary("apt-cacher-ng")
        conf = self.workdir / "conf"
        for sub in ("conf", "cache", "log"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (conf / "acng.conf").write_text(
            f"CacheDir: {self.workdir}/cache\nLogDir: {self.workdir}/log\nSupportDir: /usr/lib/apt-cacher-ng\n"
            f"Port: {self.port}\nBindAddress: 127.0.0.1\nForeGround: 1\nPidFile: {self.workdir}/pid\n"
            f"Remap-bench: /bench ; {self.upstream}/\n")
        self.proc = spawn([binary, "-c", str(conf)], str(self.workdir / "acng.out"), str(self.workdir))
        try:
            wait_for_http(f"http://127.0.0.1:{self.port}/acng-report.html", expect=(200, 403, 404, 503),
                          proc=self.proc, what="apt-cacher-ng", log=str(self.workdir / "acng.out"))
        except BaseException:
            self.stop()  # it may run without ever answering
            raise
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/bench"

    def stop(self) -> None:
        stop_process(self.proc)


def _port_below_32768() -> int:
    """
    A free port apt-cacher-ng can use: 3.7 refuses to listen on a port
    above 32767 ("Error resolving address") or to reach a backend there (503).
    """
    for _ in range(100):
        port = random.randrange(20000, 32768)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


def _ocicache(workdir: Path, upstream: str) -> Daemon:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "ocicache.toml"
    config.write_text(
        f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n[cache]\ndir = "{workdir / "cache"}"\n'
        '[[upstream]]\nname = "docker.io"\nurl = "http://127.0.0.1:9"\n'
        f'[[files]]\nname = "bench"\nurl = "{upstream}"\nkind = "deb"\n')
    return Daemon(str(config), port=port, workdir=str(workdir)).start()


def run_files(total_mib: int, log: Callable[[str], None], json_path: str | None = None,
              keep: bool = False) -> int:
    """The whole scenario; prints a Markdown table, returns an exit status."""
    require_binary("nginx")
    require_binary("curl")
    workdir = Path(tempfile.mkdtemp(prefix="ocicache-bench-files-"))
    repo = DebRepository(workdir / "repo")
    count = max(1, total_mib // PACKAGE_MIB)
    each = max(1, total_mib // count)
    log(f"files: building {count} packages of {each} MiB")
    paths = []
    for n in range(count):
        deb = repo.add(f"bench{n:02d}", "1.0", payload_size=each * MiB)
        paths.append(str(deb.relative_to(repo.root)))
    repo.publish()
    sizes = [(repo.root / path).stat().st_size for path in paths]
    nginx = Nginx(repo.root, workdir / "nginx")
    nginx.port = _port_below_32768()  # apt-cacher-ng's backend
    nginx.start()
    rounds: list[Round] = []
    try:
        for mirror in ("ocicache", "apt-cacher-ng"):
            stop: Callable[[], object]
            if mirror == "ocicache":
                daemon = _ocicache(workdir / "ocicache", nginx.url)
                base, pid, stop = f"{daemon.url}/files/bench", daemon.pid, daemon.stop
            else:
                acng = _AptCacherNg(workdir / "acng", nginx.url).start()
                base, pid, stop = acng.base, acng.proc.pid if acng.proc else None, acng.stop
            try:
                urls = [f"{base}/{path}" for path in paths]
                for name in ("cold", "warm"):
                    seen = _upstream(nginx.access_log)
                    wall, delivered, errors = _round(urls, sizes, CLIENTS)
                    time.sleep(1)  # the mirror's last upstream requests end and are logged
                    requests, sent = (now - before for now, before in zip(_upstream(nginx.access_log), seen,
                                                                        strict=True))
                    result = Round(mirror, name, wall, delivered, requests, sent,
                                   _peak_rss_mib(pid) if pid is not None else 0.0, errors)
                    rounds.append(result)
                    log(f"files: {mirror} {name}: {wall:.2f}s, {result.throughput_mib_s:.0f} MiB/s, "
                        f"{result.upstream_requests} upstream requests, {errors} errors")
            finally:
                stop()
    finally:
        nginx.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(_markdown(rounds, count, sum(sizes)))
    if json_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump([{**asdict(r), "throughput_mib_s": r.throughput_mib_s} for r in rounds], f, indent=2)
    return 1 if any(r.errors for r in rounds) else 0


def _markdown(rounds: list[Round], count: int, total: int) -> str:
    by = {(r.mirror, r.round): r for r in rounds}
    lines = [
        f"{CLIENTS} clients each downloading the same {count} packages ({total / MiB:.0f} MiB), "
        f"on {os.cpu_count()} cores.",
        "",
        "| | ocicache | apt-cacher-ng |",
        "|---|---:|---:|",
    ]

    def row(label: str, name: str, value: Callable[[Round], str]) -> None:
        cells = [value(by[(mirror, name)]) if (mirror, name) in by else "-" for mirror in ("ocicache", "apt-cacher-ng")]
        lines.append(f"| {name}: {label} | {cells[0]} | {cells[1]} |")

    for name in ("cold", "warm"):
        row("wall time (s)", name, lambda r: f"{r.wall_seconds:.2f}")
        row("throughput to all clients (MiB/s)", name, lambda r: f"{r.throughput_mib_s:,.0f}")
        row("upstream requests", name, lambda r: str(r.upstream_requests))
        row("upstream MiB", name, lambda r: f"{r.upstream_bytes / MiB:,.0f}")
        row("peak RSS (MiB)", name, lambda r: f"{r.peak_rss_mib:.0f}")
        row("client errors", name, lambda r: str(r.errors))
    return "\n".join(lines) + "\n"
