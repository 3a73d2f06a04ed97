"""
The five measurements.  Each takes a L{Context} and returns a
L{bench.report.Section}; each starts its own mirrors with fresh caches and
stops them, whatever happens.

The first, warm blob throughput, has parts that C{--only} can pick
(L{THROUGHPUT_PARTS}): the 1- and 8-connection downloads, the scale curve
in clients, a big blob, idle connections and HTTPS.  Its servers include
nginx (sendfile) serving the very file ocicache stored: the physical limit
of this disk and this loopback.

Servers are measured one at a time, alternating which goes first from one
repetition to the next, so slow drift on a shared machine does not
favour either.

C{bench/run --workers} gives ocicache's C{[server] workers} settings.  The
first runs everything; the others are measured beside it where more
processes can make a difference (L{WORKERS_PARTS} of scenario 1, and the
cold blob, whose clients the kernel spreads over the workers), each an
ocicache of its own, with its own hop, named by L{Context.ocicache_names}.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ocitest import http_request
from ocitest.containerd import write_hosts_dir
from ocitest.images import MEDIA, Image

from . import clients, server_procs
from .report import Comparison, Section, Target, median, workers_label
from .rig import KINDS, Mirror, Nginx, Rig

__all__ = ["CHOICES", "PLANS", "THROUGHPUT_PARTS", "WORKERS_PARTS", "Context", "Plan", "SCENARIOS",
           "evaluate_targets", "plan_for"]

MiB = 1 << 20
GiB = 1 << 30
MANIFEST_ACCEPT = ", ".join(MEDIA.MANIFEST_TYPES)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    mode: str
    blob_mib: int
    """The blob of scenarios 1 and 2."""
    throughput_reps: int
    parallel: int
    cold_clients: tuple[int, ...]
    cold_reps: int
    load_seconds: float
    load_reps: int
    load_connections: int
    memory_sizes: tuple[int, ...]
    """Blob sizes (MiB) of scenario 4: more than one shows whether memory grows with size."""
    slow_clients: int
    slow_rate: float
    """Bytes per second per slow client."""
    ctr_layers: tuple[int, ...]
    """Layer sizes (MiB) of the image scenario 5 pulls."""
    ctr_reps: int
    scale_clients: tuple[int, ...] = (1, 8, 64, 256)
    """Concurrent clients of the scale curve (scenario 1)."""
    scale_seconds: float = 3.0
    """Length of one time-bounded load run (scale curve, big blob, idle connections)."""
    scale_reps: int = 2
    big_mib: int = 1024
    """The big blob of scenario 1 (0: none)."""
    idle_connections: int = 1000
    idle_active: int = 8
    """Clients downloading while the idle connections are held open."""
    manifest_high: int = 512
    """The high connection count of GET by digest (scenario 3)."""
    tls_reps: int = 2
    slow_window: float = 30.0
    """Slow clients stop after this many seconds (0: read the whole blob)."""
    scale_out_nodes: int = 3
    """Nodes of each configuration of C{--scale-out} (L{bench.scale_out})."""
    scale_out_clients: int = 16
    """Clients per node of C{--scale-out}, all released at once."""
    scale_out_reps: int = 3


PLANS = {
    "full": Plan("full", 256, 5, 8, (1, 16), 3, 5.0, 3, 64, (1, 256, 1024), 64, 5e6, (16,) * 8, 3,
                 scale_clients=(1, 8, 64, 256), scale_seconds=3.0, scale_reps=2, big_mib=1024,
                 idle_connections=1000, tls_reps=2, slow_window=30.0),
    "quick": Plan("quick", 64, 3, 8, (1, 16), 2, 3.0, 1, 64, (1, 64), 16, 5e6, (8,) * 4, 1,
                  scale_clients=(1, 8, 64, 256), scale_seconds=2.0, scale_reps=1, big_mib=256,
                  idle_connections=1000, tls_reps=1, slow_window=30.0, scale_out_reps=2),
    "tiny": Plan("tiny", 4, 2, 8, (1, 16), 1, 1.0, 1, 64, (1, 4), 4, 5e6, (1, 1, 1), 1,
                 scale_clients=(1, 8), scale_seconds=0.5, scale_reps=1, big_mib=0,
                 idle_connections=50, tls_reps=1, slow_window=30.0, scale_out_clients=4, scale_out_reps=1),
}


def plan_for(mode: str, size_mib: int | None = None, slow_clients: int | None = None,
             scale_out_nodes: int | None = None, scale_out_clients: int | None = None) -> Plan:
    plan = PLANS[mode]
    if scale_out_nodes:
        plan = Plan(**{**asdict(plan), "scale_out_nodes": scale_out_nodes})
    if scale_out_clients:
        plan = Plan(**{**asdict(plan), "scale_out_clients": scale_out_clients})
    if size_mib:
        sizes = tuple(sorted({*(s for s in plan.memory_sizes if s < size_mib), size_mib}))
        plan = Plan(**{**asdict(plan), "blob_mib": size_mib, "memory_sizes": sizes})
    if slow_clients:
        plan = Plan(**{**asdict(plan), "slow_clients": slow_clients})
    return plan


THROUGHPUT_PARTS = ("throughput", "scale", "bigblob", "idle", "tls")
"""Parts of scenario 1: 1 and 8 connections, the scale curve, the big blob, idle connections, HTTPS."""

WORKERS_PARTS = ("throughput", "scale", "tls")
"""Parts of scenario 1 measured with every C{--workers} setting (the others with the first only)."""

SERVERS = (*KINDS, "nginx")


@dataclass
class Context:
    rig: Rig
    plan: Plan
    log: Log
    workdir: str
    profile_dir: str | None = None
    profiles: dict[str, Any] = field(default_factory=dict)
    parts: frozenset[str] = frozenset(THROUGHPUT_PARTS)
    """The parts of scenario 1 to run."""
    workers: tuple[str, ...] = ("1",)
    """ocicache's C{[server] workers} settings (C{--workers}); the first runs every scenario."""

    def image(self, key: str) -> Image:
        return self.rig.images[key]

    def mirror(self, kind: str) -> Mirror:
        """
        A fresh mirror of C{kind}: ocicache with the first workers setting.
        """
        return self.rig.mirror(kind, workers=self.workers[0] if kind == "ocicache" else "1")

    def ocicache_names(self) -> dict[str, str]:
        """
        The server name of ocicache with each workers setting: plain
        C{ocicache} for the first.
        """
        return {w: "ocicache" if i == 0 else f"ocicache[workers={w}]" for i, w in enumerate(self.workers)}

    def by_workers(self, values: Mapping[str, float]) -> dict[str, float]:
        """
        ocicache's value with each workers setting from C{values} (by server
        name), for L{Section.add}'s C{workers}: empty unless more than one
        setting was measured.
        """
        found = {w: values[name] for w, name in self.ocicache_names().items() if name in values}
        return found if len(found) > 1 else {}

    def workers_note(self, mirrors: list[Mirror]) -> str:
        """
        What the workers settings of C{mirrors} came to (their worker
        processes), for a section's notes; empty with one setting.
        """
        if len(self.workers) < 2 and self.workers[0] == "1":
            return ""
        found = ", ".join(f"{workers_label(m.workers)}: " + (f"a main process and {len(m.worker_pids)} workers"
                                                             if m.worker_pids else "one process")
                          for m in mirrors if m.kind == "ocicache")
        return (f"ocicache ran with `[server] workers` {', '.join(self.workers)} ({found}); its server CPU "
                "is the main process's and every worker's together (the process tree in `/proc`, workers "
                "that exited included), its RSS the sum of theirs.")

    def order(self, rep: int, servers: tuple[str, ...] = KINDS) -> tuple[str, ...]:
        return servers if rep % 2 == 0 else tuple(reversed(servers))

    @contextlib.contextmanager
    def profiled(self, mirror: Mirror, name: str) -> Iterator[None]:
        """
        py-spy on ocicache (every process of it) during the block, when
        C{--profile} asked; C{name} names the file, with the workers
        setting when it is not the first.
        """
        if self.profile_dir is None or mirror.kind != "ocicache":
            yield
            return
        if mirror.workers != self.workers[0]:
            name += f"-workers-{mirror.workers}"
        path = os.path.join(self.profile_dir, f"{name}.txt")
        profiler = clients.Profiler(mirror.pid, path)
        with profiler:
            yield
        self.profiles[name] = {"error": profiler.error} if profiler.error else {"raw": path}


def _blob_url(mirror: Mirror, image: Image) -> str:
    return f"{mirror.url}/v2/{image.repo}/blobs/{image.layers[0].digest}"


def _settle() -> None:
    # A just-started mirror finishes its start-up work (ocicache's first
    # janitor pass, the Go runtime's first GC) before it is measured.
    time.sleep(0.5)


def _check_fetch(report: dict[str, Any], size: int, digest: str) -> str | None:
    if report.get("error"):
        return str(report["error"])
    if report.get("status") != 200:
        return f"HTTP {report.get('status')}"
    if report.get("cut"):
        # Stopped on purpose part-way (a slow client's time window).
        if report.get("content_length") != size:
            return f"Content-Length {report.get('content_length')}, not {size}"
        if not report.get("bytes") or report["bytes"] > size:
            return f"{report.get('bytes')} bytes of {size} when stopped"
        return None
    if report.get("bytes") != size:
        return f"{report.get('bytes')} bytes of {size}"
    if report.get("sha256") is not None and report["sha256"] != digest:
        return f"SHA-256 {report['sha256'][:19]}… is not {digest[:19]}…"
    return None


def _warm_blob(ctx: Context, mirror: Mirror, image: Image) -> None:
    """
    Fetch the blob once through C{mirror} (verifying it), wait until the
    mirror has stored it and its hop is quiet, then reset the hop.
    """
    blob = image.layers[0]
    _, reports = clients.fetch_many(_blob_url(mirror, image), 1)
    problem = _check_fetch(reports[0], blob.size, blob.digest)
    if problem:
        raise RuntimeError(f"warming {mirror.kind}: {problem}\n{mirror.log_tail()}")
    mirror.wait_blob_stored(blob)
    mirror.hop.wait_idle(timeout=120)
    mirror.hop.reset()


# --- 1. warm blob throughput -------------------------------------------------


def _path_of(image: Image) -> str:
    return f"/v2/{image.repo}/blobs/{image.layers[0].digest}"


def _tls_warm(ctx: Context, mirror: Mirror, image: Image) -> None:
    """
    L{_warm_blob} over HTTPS (curl trusting the run's certificate; the
    mirror checks the digest as it stores).
    """
    blob = image.layers[0]
    r = clients.curl_get(mirror.tls_url + _path_of(image), cacert=ctx.rig.certificate()[0])
    if r.error or r.status != 200 or r.bytes != blob.size:
        raise RuntimeError(f"warming {mirror.kind} (TLS): HTTP {r.status}, {r.bytes} bytes {r.error}\n"
                           f"{mirror.log_tail()}")
    mirror.wait_blob_stored(blob)
    mirror.hop.wait_idle(timeout=120)
    mirror.hop.reset()


def _per_gib(cpu: float, served: int) -> float:
    return cpu / (served / GiB) if served else 0.0


class _Servers:
    """
    The servers of scenario 1 by name (ocicache, distribution, nginx):
    their pids and base URLs.
    """

    def __init__(self, mirrors: dict[str, Mirror], nginx: Nginx | None, variants: tuple[str, ...] = ()) -> None:
        self.mirrors = mirrors
        self.nginx = nginx
        self.variants = variants
        """The names of ocicache with the other workers settings."""

    def names(self, rep: int, with_nginx: bool = True, every_workers: bool = True) -> tuple[str, ...]:
        servers = ("ocicache", *(self.variants if every_workers else ()), "distribution",
                   *(("nginx",) if with_nginx and self.nginx is not None else ()))
        return servers if rep % 2 == 0 else tuple(reversed(servers))

    def pid(self, name: str) -> int:
        if name == "nginx":
            assert self.nginx is not None
            return self.nginx.pid
        return self.mirrors[name].pid

    def profiled(self, ctx: Context, name: str, label: str) -> contextlib.AbstractContextManager[None]:
        if name == "nginx":
            return contextlib.nullcontext()
        return ctx.profiled(self.mirrors[name], label)

    def url(self, name: str, image: Image) -> str:
        if name == "nginx":
            assert self.nginx is not None
            return self.nginx.url + _path_of(image)
        return self.mirrors[name].url + _path_of(image)


def _load_point(ctx: Context, servers: _Servers, name: str, image: Image, clients_n: int,
                label: str) -> dict[str, Any]:
    """
    One time-bounded L{clients.blob_load} run against one server, with its
    CPU time (and, for the mirrors, peak RSS) over the run.
    """
    pid = servers.pid(name)
    sampler = server_procs.RssSampler(pid) if name != "nginx" else None
    before = server_procs.tree_cpu_seconds(pid)
    with sampler if sampler is not None else contextlib.nullcontext(), servers.profiled(ctx, name, label):
        r = clients.blob_load(servers.url(name, image), clients_n, ctx.plan.scale_seconds)
    r["cpu_s"] = server_procs.tree_cpu_seconds(pid) - before
    r["cpu_per_gib"] = _per_gib(r["cpu_s"], r["bytes"])
    if sampler is not None:
        r["rss"] = sampler.result()
    return r


def _median_of(runs: dict[str, list[dict[str, Any]]], name: str, field_name: str) -> float:
    return median(r[field_name] for r in runs.get(name, []))


def warm_throughput(ctx: Context) -> Section:
    plan = ctx.plan
    parts = ctx.parts
    image = ctx.image(f"big{plan.blob_mib}")
    blob = image.layers[0]
    size_mib = blob.size / MiB
    big = ctx.image(f"big{plan.big_mib}") if plan.big_mib and "bigblob" in parts else None
    section = Section("warm_throughput", f"1. Warm blob throughput ({plan.blob_mib} MiB blob)")
    mirrors: dict[str, Mirror] = {}
    tls_dist: Mirror | None = None
    nginx: Nginx | None = None
    problems: list[str] = []
    images = [image, *([big] if big is not None else [])]
    # ocicache with the other workers settings, for the parts they join.
    variants = {name: w for w, name in ctx.ocicache_names().items()
                if w != ctx.workers[0]} if parts & set(WORKERS_PARTS) else {}
    try:
        for kind in KINDS:
            mirrors[kind] = ctx.rig.mirror(kind, tls="tls" in parts and kind == "ocicache",
                                           workers=ctx.workers[0] if kind == "ocicache" else "1")
            for img in images:
                _warm_blob(ctx, mirrors[kind], img)
        for name, setting in variants.items():
            mirrors[name] = ctx.rig.mirror("ocicache", tls="tls" in parts, workers=setting)
            _warm_blob(ctx, mirrors[name], image)
        if "tls" in parts:
            tls_dist = ctx.rig.mirror("distribution", tls=True)
            _tls_warm(ctx, tls_dist, image)
        if parts - {"tls"}:
            # The physical limit: nginx sending the file ocicache stored.
            nginx = ctx.rig.nginx({_path_of(img): mirrors["ocicache"].blob_path(img.layers[0].digest)
                                   for img in images})
        servers = _Servers(mirrors, nginx, tuple(variants))
        _settle()
        if "throughput" in parts:
            _downloads(ctx, section, servers, image, problems)
        # Before the scale curve: RSS never shrinks back after 256 clients.
        if "idle" in parts:
            _idle(ctx, section, servers, image, problems)
        if "scale" in parts:
            _scale_curve(ctx, section, servers, image, problems)
        if big is not None:
            _big_blob(ctx, section, servers, big, problems)
        upstream = {name: mirror.hop.count() for name, mirror in mirrors.items()}
        if tls_dist is not None:
            upstream["distribution"] += tls_dist.hop.count()
        section.add("upstream_requests", "upstream requests during the warm runs", "requests", "lower",
                    upstream["ocicache"], upstream["distribution"], workers=ctx.by_workers(upstream))
        if tls_dist is not None:
            _https(ctx, section, {name: mirrors[name] for name in ("ocicache", *variants)}, tls_dist, image,
                   problems)
        if note := ctx.workers_note(list(mirrors.values())):
            section.notes.append(note)
        if nginx is not None:
            section.notes.append(
                f"nginx {_nginx_version()} (Debian) is the physical limit: `sendfile on`, `tcp_nopush on`, "
                "`worker_processes auto`, access log off, keep-alive, an exact `location` per blob whose "
                "`alias` is the file ocicache stored (`<cache>/blobs/sha256/xx/<hex>`), same request path, "
                "same disk, same loopback, same clients. *Fraction of the limit* is ocicache/nginx "
                "(nginx/ocicache for CPU): 1.00 is as good as nginx. Server CPU for nginx is its master "
                f"and workers together; {size_mib:.0f} MiB came from the page cache for every server."
            )
        if problems:
            section.error = "; ".join(problems[:5])
    finally:
        if nginx is not None:
            ctx.rig.stop_nginx(nginx)
        for mirror in [*mirrors.values(), *([tls_dist] if tls_dist is not None else [])]:
            ctx.rig.stop_mirror(mirror)
    return section


def _nginx_version() -> str:
    try:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"})
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stderr.strip().rpartition("/")[2] or "?"


def _downloads(ctx: Context, section: Section, servers: _Servers, image: Image, problems: list[str]) -> None:
    """
    Whole-blob downloads with curl: one connection, then C{parallel} at
    once (the rows the targets judge).
    """
    plan = ctx.plan
    blob = image.layers[0]
    size_mib = blob.size / MiB
    names = servers.names(0)
    one: dict[str, list[float]] = {k: [] for k in names}
    many: dict[str, list[float]] = {k: [] for k in names}
    # Server CPU seconds and bytes served, summed over the runs (the
    # clock tick is 10 ms: one run alone is too coarse).
    cpu_one = {k: 0.0 for k in names}
    cpu_many = {k: 0.0 for k in names}
    served_one = {k: 0 for k in names}
    served_many = {k: 0 for k in names}
    for rep in range(plan.throughput_reps):
        for name in servers.names(rep):
            url = servers.url(name, image)
            pid = servers.pid(name)
            before = server_procs.tree_cpu_seconds(pid)
            with servers.profiled(ctx, name, f"warm-1conn-{rep}"):
                r = clients.curl_get(url)
            cpu_one[name] += server_procs.tree_cpu_seconds(pid) - before
            served_one[name] += r.bytes
            if r.error or r.status != 200 or r.bytes != blob.size:
                problems.append(f"{name} 1 connection: HTTP {r.status}, {r.bytes} bytes {r.error}")
            else:
                one[name].append(size_mib / r.total)
        for name in servers.names(rep):
            url = servers.url(name, image)
            pid = servers.pid(name)
            before = server_procs.tree_cpu_seconds(pid)
            with servers.profiled(ctx, name, f"warm-{plan.parallel}conn-{rep}"):
                wall, results = clients.curl_parallel(url, plan.parallel)
            cpu_many[name] += server_procs.tree_cpu_seconds(pid) - before
            served_many[name] += sum(r.bytes for r in results)
            bad = [r for r in results if r.error or r.status != 200 or r.bytes != blob.size]
            if bad:
                problems.append(f"{name} {plan.parallel} connections: {len(bad)} failed: {bad[0]}")
            else:
                many[name].append(plan.parallel * size_mib / wall)
        ctx.log(f"warm throughput rep {rep + 1}/{plan.throughput_reps}: "
                + ", ".join(f"{k} {one[k][-1:]} / {many[k][-1:]}" for k in names))

    def ref(values: dict[str, Any], fn: Callable[[str], float]) -> float | None:
        return fn("nginx") if "nginx" in values else None

    section.add("one_connection", "1 connection", "MiB/s", "higher",
                median(one["ocicache"]), median(one["distribution"]), samples=one,
                nginx=ref(one, lambda k: median(one[k])),
                workers=ctx.by_workers({k: median(v) for k, v in one.items()}))
    section.add(f"{plan.parallel}_connections", f"{plan.parallel} connections, aggregate", "MiB/s",
                "higher", median(many["ocicache"]), median(many["distribution"]), samples=many,
                nginx=ref(many, lambda k: median(many[k])),
                workers=ctx.by_workers({k: median(v) for k, v in many.items()}))
    section.add("cpu_per_gib_1", "server CPU per GiB served, 1 connection", "CPU s/GiB", "lower",
                _per_gib(cpu_one["ocicache"], served_one["ocicache"]),
                _per_gib(cpu_one["distribution"], served_one["distribution"]), floor=0.001, digits=2,
                nginx=ref(cpu_one, lambda k: _per_gib(cpu_one[k], served_one[k])),
                workers=ctx.by_workers({k: _per_gib(cpu_one[k], served_one[k]) for k in names}))
    section.add(f"cpu_per_gib_{plan.parallel}", f"server CPU per GiB served, {plan.parallel} connections",
                "CPU s/GiB", "lower", _per_gib(cpu_many["ocicache"], served_many["ocicache"]),
                _per_gib(cpu_many["distribution"], served_many["distribution"]), floor=0.001, digits=2,
                nginx=ref(cpu_many, lambda k: _per_gib(cpu_many[k], served_many[k])),
                workers=ctx.by_workers({k: _per_gib(cpu_many[k], served_many[k]) for k in names}))
    section.notes.append(
        f"1 and {plan.parallel} connections: `curl -o /dev/null` per connection; median of "
        f"{plan.throughput_reps} runs; 1 connection from curl's `time_total`, {plan.parallel} connections "
        f"from the wall time of all {plan.parallel} processes. The blob was fetched and SHA-256-verified "
        "once through each mirror first, and stored by both before timing. Server CPU is user + system "
        "time of the server's processes (all threads, from `/proc/PID/stat`: nginx's master and workers, "
        "ocicache's main process and workers) over all runs, divided by the bytes served."
    )


def _add_load_rows(ctx: Context, section: Section, runs: dict[str, list[dict[str, Any]]], key: str,
                   label: str) -> None:
    nginx = "nginx" in runs and bool(runs["nginx"])
    mib = {k: [round(r["mib_s"], 1) for r in v] for k, v in runs.items()}
    section.add(f"{key}_mib_s", f"{label}: aggregate", "MiB/s", "higher",
                _median_of(runs, "ocicache", "mib_s"), _median_of(runs, "distribution", "mib_s"),
                nginx=_median_of(runs, "nginx", "mib_s") if nginx else None, samples=mib,
                workers=ctx.by_workers({k: _median_of(runs, k, "mib_s") for k in runs}))
    section.add(f"{key}_cpu_per_gib", f"{label}: server CPU per GiB served", "CPU s/GiB", "lower",
                _median_of(runs, "ocicache", "cpu_per_gib"), _median_of(runs, "distribution", "cpu_per_gib"),
                nginx=_median_of(runs, "nginx", "cpu_per_gib") if nginx else None, floor=0.001, digits=2,
                workers=ctx.by_workers({k: _median_of(runs, k, "cpu_per_gib") for k in runs}))


def _check_load(problems: list[str], name: str, what: str, r: dict[str, Any]) -> None:
    if r["errors"] or r["bad"] or not r["bytes"]:
        problems.append(f"{name} {what}: {r['errors']} errors, {r['bad']} bad answers {r['statuses']}, "
                        f"{r['bytes']} bytes")


def _scale_curve(ctx: Context, section: Section, servers: _Servers, image: Image, problems: list[str]) -> None:
    """
    Warm throughput and server CPU per GiB at each client count of the
    curve, time-bounded keep-alive downloads (L{bench.blob_load}).
    """
    plan = ctx.plan
    curve: dict[int, dict[str, list[dict[str, Any]]]] = {n: {} for n in plan.scale_clients}
    for rep in range(plan.scale_reps):
        for name in servers.names(rep):
            for n in plan.scale_clients:
                r = _load_point(ctx, servers, name, image, n, f"scale-{n}-{rep}")
                _check_load(problems, name, f"{n} clients", r)
                curve[n].setdefault(name, []).append(r)
                ctx.log(f"scale {n} clients {name}: {r['mib_s']:,.0f} MiB/s, {r['cpu_per_gib']:.2f} CPU s/GiB, "
                        f"{r['responses']} whole bodies, {r['errors']} errors, slowest first answer "
                        f"{r['first_headers_max_s']:.2f} s, {r['never_answered']} never answered")
    for n in plan.scale_clients:
        who = "1 client" if n == 1 else f"{n} clients"
        _add_load_rows(ctx, section, curve[n], f"scale_{n}", f"scale, {who}")
    section.details["scale"] = {str(n): curve[n] for n in plan.scale_clients}
    top = max(plan.scale_clients)
    waits = ", ".join(f"{name} {max(r['first_headers_max_s'] for r in runs):.2f} s"
                      for name, runs in curve[top].items() if runs)
    section.notes.append(
        f"Scale curve: {', '.join(str(n) for n in plan.scale_clients)} concurrent clients, each a keep-alive "
        f"connection downloading the {plan.blob_mib} MiB blob over and over for {plan.scale_seconds:g} s "
        "(`bench/blob_load.py`, up to 2 processes, 1 MiB `recv_into`, bodies counted and discarded; a body "
        "still in flight at the end counts with the bytes it got); throughput is body bytes over the run, "
        f"CPU per GiB from the server's `/proc/PID/stat` over the run; median of {plan.scale_reps} run(s). "
        f"All connections connect at once; the slowest of the {top} waited for its first answer: {waits}."
    )


def _big_blob(ctx: Context, section: Section, servers: _Servers, big: Image, problems: list[str]) -> None:
    plan = ctx.plan
    label = f"{plan.big_mib // 1024} GiB" if plan.big_mib % 1024 == 0 else f"{plan.big_mib} MiB"
    counts = (1, plan.parallel)
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {n: {} for n in counts}
    for rep in range(plan.scale_reps):
        for name in servers.names(rep, every_workers=False):
            for n in counts:
                r = _load_point(ctx, servers, name, big, n, f"big-{n}-{rep}")
                _check_load(problems, name, f"{label} blob, {n} clients", r)
                runs[n].setdefault(name, []).append(r)
                ctx.log(f"{label} blob, {n} clients {name}: {r['mib_s']:,.0f} MiB/s, "
                        f"{r['cpu_per_gib']:.2f} CPU s/GiB")
    for n in counts:
        who = "1 client" if n == 1 else f"{n} clients"
        _add_load_rows(ctx, section, runs[n], f"big_{n}", f"{label} blob, {who}")
    section.details["big_blob"] = {"mib": plan.big_mib, **{str(n): runs[n] for n in counts}}
    section.notes.append(
        f"{label} blob: the same time-bounded downloads as the scale curve ({plan.scale_seconds:g} s, "
        f"median of {plan.scale_reps}), 1 and {plan.parallel} clients."
    )


def _idle(ctx: Context, section: Section, servers: _Servers, image: Image, problems: list[str]) -> None:
    """
    C{idle_active} clients downloading, without, with C{idle_connections}
    idle keep-alive connections held open, and without again (so drift
    on a shared machine falls on both sides): throughput and (for the
    mirrors) peak RSS.
    """
    plan = ctx.plan
    n, idle = plan.idle_active, plan.idle_connections
    base: dict[str, list[dict[str, Any]]] = {}
    after: dict[str, list[dict[str, Any]]] = {}
    loaded: dict[str, list[dict[str, Any]]] = {}
    held: list[dict[str, Any]] = []
    for rep in range(plan.scale_reps):
        for name in servers.names(rep, every_workers=False):
            r = _load_point(ctx, servers, name, image, n, f"idle-base-{rep}")
            _check_load(problems, name, f"{n} clients", r)
            base.setdefault(name, []).append(r)
            base_url = servers.url(name, image).split("/v2/", 1)[0]
            with clients.IdleConnections(base_url + "/v2/", idle, max_seconds=plan.scale_seconds + 120) as conns:
                if conns.opened < idle:
                    problems.append(f"{name}: only {conns.opened} of {idle} idle connections opened")
                # What the idle connections alone cost, before the downloads.
                rss_idle_only = server_procs.rss_mib(servers.pid(name)) if name != "nginx" else None
                r = _load_point(ctx, servers, name, image, n, f"idle-{rep}")
            _check_load(problems, name, f"{n} clients with {idle} idle connections", r)
            r["idle"] = conns.report
            r["rss_idle_only_mib"] = rss_idle_only
            loaded.setdefault(name, []).append(r)
            held.append({"server": name, **conns.report})
            if conns.report.get("still_open", idle) < conns.opened:
                problems.append(f"{name} closed {conns.opened - conns.report.get('still_open', 0)} of the "
                                f"{conns.opened} idle connections during the run")
            again = _load_point(ctx, servers, name, image, n, f"idle-after-{rep}")
            _check_load(problems, name, f"{n} clients (after)", again)
            after.setdefault(name, []).append(again)
            ctx.log(f"idle {name}: {n} clients {base[name][-1]['mib_s']:,.0f} MiB/s alone, {r['mib_s']:,.0f} MiB/s "
                    f"with {conns.opened} idle connections (still open {conns.report.get('still_open')}), "
                    f"{again['mib_s']:,.0f} MiB/s alone again"
                    + (f"; RSS peak {base[name][-1]['rss']['peak_mib']} MiB alone, {rss_idle_only} MiB with the "
                       f"idle connections before the downloads, peak {r['rss']['peak_mib']} MiB with both"
                       if "rss" in r else ""))
    # Throughput without them: the runs before and after; RSS: before only
    # (RSS does not shrink back after the idle connections).
    both = {k: base.get(k, []) + after.get(k, []) for k in base}
    _add_load_rows(ctx, section, both, "idle_base", f"{n} clients, no idle connections")
    _add_load_rows(ctx, section, loaded, "idle", f"{n} clients with {idle} idle connections open")

    def rss(runs: dict[str, list[dict[str, Any]]], kind: str) -> float:
        return median(r["rss"]["peak_mib"] for r in runs.get(kind, []))

    section.add("idle_base_rss", f"{n} clients, no idle connections: peak RSS", "MiB", "lower",
                rss(base, "ocicache"), rss(base, "distribution"), floor=0.1)
    section.add("idle_rss", f"{n} clients with {idle} idle connections open: peak RSS", "MiB", "lower",
                rss(loaded, "ocicache"), rss(loaded, "distribution"), floor=0.1)
    section.details["idle"] = {"base": base, "loaded": loaded, "after": after, "held": held}
    change = ", ".join(
        f"{k} {100 * (_median_of(loaded, k, 'mib_s') / _median_of(both, k, 'mib_s') - 1):+.1f}%"
        for k in both if _median_of(both, k, "mib_s"))
    idle_only = ", ".join(
        f"{k} {median(r['rss_idle_only_mib'] for r in loaded[k]):.0f} MiB" for k in KINDS if k in loaded)
    section.notes.append(
        f"Idle connections: {idle} keep-alive connections (`bench/idle_conns.py`: one `GET /v2/` each, "
        "answered, then silent; opened 32 at a time) held open while "
        f"{n} clients download as in the scale curve ({plan.scale_seconds:g} s), between two runs without "
        f"them; throughput change with them (against the median of the runs without): {change}. Peak RSS as "
        f"in scenario 4, of the server process over the run; RSS with only the idle connections open: "
        f"{idle_only}."
    )


def _https(ctx: Context, section: Section, ocicaches: dict[str, Mirror], dist: Mirror, image: Image,
           problems: list[str]) -> None:
    """
    Warm throughput over HTTPS: ocicache's C{ssl:} listener (with each
    workers setting: C{ocicaches} by server name) against a distribution
    serving C{http.tls}, the same self-signed certificate, curl trusting
    exactly it.
    """
    plan = ctx.plan
    blob = image.layers[0]
    size_mib = blob.size / MiB
    cacert = ctx.rig.certificate()[0]
    mirrors = {**ocicaches, "distribution": dist}
    names = tuple(mirrors)
    one: dict[str, list[float]] = {k: [] for k in names}
    many: dict[str, list[float]] = {k: [] for k in names}
    cpu = {k: 0.0 for k in names}
    served = {k: 0 for k in names}
    for rep in range(plan.tls_reps):
        for name in ctx.order(rep, names):
            mirror = mirrors[name]
            url = mirror.tls_url + _path_of(image)
            before = server_procs.tree_cpu_seconds(mirror.pid)
            with ctx.profiled(mirror, f"tls-1conn-{rep}"):
                r = clients.curl_get(url, cacert=cacert)
            served[name] += r.bytes
            if r.error or r.status != 200 or r.bytes != blob.size:
                problems.append(f"{name} HTTPS 1 connection: HTTP {r.status}, {r.bytes} bytes {r.error}")
            else:
                one[name].append(size_mib / r.total)
            with ctx.profiled(mirror, f"tls-{plan.parallel}conn-{rep}"):
                wall, results = clients.curl_parallel(url, plan.parallel, cacert=cacert)
            cpu[name] += server_procs.tree_cpu_seconds(mirror.pid) - before
            served[name] += sum(r.bytes for r in results)
            bad = [r for r in results if r.error or r.status != 200 or r.bytes != blob.size]
            if bad:
                problems.append(f"{name} HTTPS {plan.parallel} connections: {len(bad)} failed: {bad[0]}")
            else:
                many[name].append(plan.parallel * size_mib / wall)
            ctx.log(f"HTTPS {mirror.label}: {one[name][-1:]} / {many[name][-1:]} MiB/s")
    per_gib = {k: _per_gib(cpu[k], served[k]) for k in names}
    section.add("tls_one_connection", "HTTPS, 1 connection", "MiB/s", "higher",
                median(one["ocicache"]), median(one["distribution"]), samples=one,
                workers=ctx.by_workers({k: median(v) for k, v in one.items()}))
    section.add(f"tls_{plan.parallel}_connections", f"HTTPS, {plan.parallel} connections, aggregate", "MiB/s",
                "higher", median(many["ocicache"]), median(many["distribution"]), samples=many,
                workers=ctx.by_workers({k: median(v) for k, v in many.items()}))
    section.add("tls_cpu_per_gib", "HTTPS: server CPU per GiB served", "CPU s/GiB", "lower",
                per_gib["ocicache"], per_gib["distribution"], floor=0.001, digits=2,
                workers=ctx.by_workers(per_gib))
    section.notes.append(
        f"HTTPS: ocicache's `ssl:` listener (pyOpenSSL) and a second distribution with `http.tls`, both with "
        "one self-signed RSA-2048 certificate for `IP:127.0.0.1` (`openssl req -x509`), curl trusting only "
        f"it (`--cacert`, TLS 1.3, curl's default cipher); 1 and {plan.parallel} connections as above, "
        f"median of {plan.tls_reps} run(s); CPU over both."
    )


# --- 2. cold blob ------------------------------------------------------------


def _spread_text(per_worker: list[int]) -> str:
    return "+".join(str(n) for n in per_worker) if per_worker else "–"


def cold_blob(ctx: Context) -> Section:
    plan = ctx.plan
    image = ctx.image(f"big{plan.blob_mib}")
    blob = image.layers[0]
    section = Section("cold_blob", f"2. Cold blob ({plan.blob_mib} MiB), concurrent clients")
    problems: list[str] = []
    runs: list[dict[str, Any]] = []
    # Server name -> ocicache's workers setting (distribution: none).
    servers: dict[str, str | None] = {**{name: w for w, name in ctx.ocicache_names().items()},
                                      "distribution": None}
    names = tuple(servers)
    for n in plan.cold_clients:
        m: dict[str, dict[str, list[float]]] = {
            key: {k: [] for k in names}
            for key in ("wall", "gets", "bytes", "ttfb_med", "ttfb_max", "requests", "verified", "cpu")
        }
        spreads: dict[str, list[str]] = {}
        for rep in range(plan.cold_reps):
            for name in ctx.order(rep, names):
                setting = servers[name]
                mirror = (ctx.rig.mirror("distribution") if setting is None
                          else ctx.rig.mirror("ocicache", workers=setting))
                try:
                    _settle()
                    mirror.hop.reset()
                    cpu_before = server_procs.tree_cpu_seconds(mirror.pid)
                    log_from = mirror.log_size()
                    with ctx.profiled(mirror, f"cold-{n}-{rep}"):
                        t0, reports = clients.fetch_many(_blob_url(mirror, image), n)
                    mirror.hop.wait_idle(timeout=300, settle=0.3)
                    # Which worker answered which client: the kernel picks, the access log says.
                    spread = (mirror.answers_by_worker(_path_of(image), log_from, n)
                              if len(mirror.worker_pids) > 1 else None)
                    m["cpu"][name].append(server_procs.tree_cpu_seconds(mirror.pid) - cpu_before)
                    bad = [(i, p) for i, p in ((i, _check_fetch(r, blob.size, blob.digest))
                                               for i, r in enumerate(reports)) if p]
                    for i, p in bad:
                        problems.append(f"{mirror.label}, {n} clients, client {i}: {p}")
                    ends = [r["t_end"] for r in reports if r.get("t_end") is not None]
                    firsts = [r["t_first"] - t0 for r in reports if r.get("t_first") is not None]
                    gets = mirror.hop.count("GET", "/blobs/")
                    up_bytes = mirror.hop.bytes_sent_for(blob.digest)
                    m["wall"][name].append(max(ends) - t0)
                    m["gets"][name].append(gets)
                    m["bytes"][name].append(up_bytes / blob.size)
                    m["ttfb_med"][name].append(1000 * median(firsts))
                    m["ttfb_max"][name].append(1000 * max(firsts) if firsts else 0.0)
                    m["requests"][name].append(mirror.hop.count())
                    m["verified"][name].append(n - len(bad))
                    run: dict[str, Any] = {
                        "kind": mirror.kind, "server": name, "workers": setting, "clients": n, "rep": rep,
                        "wall_s": max(ends) - t0, "upstream_gets": gets, "upstream_bytes": up_bytes,
                        "upstream_requests": mirror.hop.count(),
                        "hop": [repr(r) for r in mirror.hop.requests][:50],
                        "first_byte_ms": [round(1000 * f, 1) for f in firsts],
                        "verified": n - len(bad)}
                    if mirror.worker_pids:
                        run["worker_processes"] = len(mirror.worker_pids)
                    if spread is not None:
                        run["clients_per_worker"] = spread
                        spreads.setdefault(name, []).append(_spread_text(spread))
                    runs.append(run)
                    ctx.log(f"cold {n} client(s) rep {rep + 1} {mirror.label}: {max(ends) - t0:.2f}s, "
                            f"{gets} upstream GETs, {up_bytes / blob.size:.2f}× blob"
                            + (f", clients per worker {_spread_text(spread)}" if spread is not None else ""))
                finally:
                    ctx.rig.stop_mirror(mirror)
        who = "1 client" if n == 1 else f"{n} clients"

        def add(key: str, label: str, unit: str, measured: str, m: dict[str, dict[str, list[float]]] = m,
                **kwargs: Any) -> None:
            values = {k: median(v) for k, v in m[measured].items()}
            section.add(key, label, unit, "lower", values["ocicache"], values["distribution"],
                        workers=ctx.by_workers(values), **kwargs)

        add(f"wall_{n}", f"{who}: wall time until all have every byte", "s", "wall", floor=0.001,
            samples=m["wall"])
        add(f"upstream_gets_{n}", f"{who}: upstream blob GETs", "requests", "gets")
        add(f"upstream_bytes_{n}", f"{who}: upstream bytes", "× blob size", "bytes", floor=0.01, digits=2)
        add(f"first_byte_median_{n}", f"{who}: first byte, median", "ms", "ttfb_med", floor=0.1)
        if n > 1:
            add(f"first_byte_max_{n}", f"{who}: first byte, max", "ms", "ttfb_max", floor=0.1)
        add(f"server_cpu_{n}", f"{who}: server CPU time", "CPU s", "cpu", floor=0.01, digits=2)
        section.notes.append(
            f"{who}: SHA-256 verified for " + ", ".join(
                f"{k} {int(sum(m['verified'][k]))}/{n * plan.cold_reps}" for k in names)
            + "; upstream requests of any kind: " + ", ".join(
                f"{k} {median(m['requests'][k]):.0f}" for k in names)
            + "; upstream blob GETs by run: " + ", ".join(
                f"{k} {'/'.join(str(int(g)) for g in m['gets'][k])}" for k in names)
        )
        for name, by_run in spreads.items():
            section.notes.append(
                f"{who}, {name}: clients answered by each worker, by run (the kernel hands each connection "
                f"on the shared socket to one worker; the access log names it): {', '.join(by_run)}."
            )
    section.notes.append(
        f"Fresh caches for every run; median of {plan.cold_reps} run(s). Each client is its own "
        "process (Python `http.client`, 1 MiB reads, SHA-256 of the body), all released at one "
        "instant; first-byte time runs from that instant to the first body byte. Upstream traffic is "
        "counted by the hop between the mirror and the upstream, after it has gone quiet (distribution "
        "keeps storing in the background after its clients finish)."
    )
    if len(ctx.workers) > 1 or ctx.workers[0] != "1":
        section.notes.append(
            f"ocicache ran with `[server] workers` {', '.join(ctx.workers)}, each on a fresh cache of its own "
            "with its own hop; its server CPU is the main process's and every worker's together."
        )
    section.details["runs"] = runs
    if problems:
        section.error = f"{len(problems)} client(s) failed: " + "; ".join(problems[:5])
    return section


# --- 3. warm manifests ---------------------------------------------------------


def warm_manifests(ctx: Context) -> Section:
    plan = ctx.plan
    image = ctx.image("oci")
    assert image.tag is not None
    title = f"3. Warm manifests, {plan.load_connections} connections"
    if plan.manifest_high and plan.manifest_high != plan.load_connections:
        title += f" (GET by digest also at {plan.manifest_high})"
    section = Section("warm_manifests", title)
    mirrors: dict[str, Mirror] = {}
    tag_path = f"/v2/{image.repo}/manifests/{image.tag}"
    digest_path = f"/v2/{image.repo}/manifests/{image.manifest_digest}"
    problems: list[str] = []
    try:
        for kind in KINDS:
            mirror = mirrors[kind] = ctx.mirror(kind)
            for path in (tag_path, digest_path):
                status, headers, body = http_request(mirror.url + path, headers={"Accept": MANIFEST_ACCEPT})
                if status != 200 or body != image.manifest_bytes:
                    raise RuntimeError(f"warming {kind} {path}: HTTP {status} {body[:200]!r}")
            mirror.hop.wait_idle(timeout=30)
        _settle()
        script_dir = os.path.join(ctx.workdir, "lua")
        any_mirror = mirrors["ocicache"]
        head_tool = "wrk" if clients.wrk_handles_head(any_mirror.url + tag_path, MANIFEST_ACCEPT, script_dir) \
            else "head_load"
        # For scale: what one upstream round trip costs here (straight at
        # the upstream, through the distribution's hop, nothing cached).
        hop = mirrors["distribution"].hop
        baseline = clients.run_head_load(hop.url + tag_path, "HEAD", MANIFEST_ACCEPT, plan.load_seconds,
                                         plan.load_connections, 2)
        baseline.pop("text", None)
        section.details["upstream_head_tag_baseline"] = baseline
        hop.wait_idle(timeout=60)
        hop.reset()
        conns = plan.load_connections
        endpoints = [
            ("head_tag", "HEAD", tag_path, "HEAD by tag", head_tool, conns),
            ("get_tag", "GET", tag_path, "GET by tag", "wrk", conns),
            ("get_digest", "GET", digest_path, "GET by digest", "wrk", conns),
        ]
        if plan.manifest_high and plan.manifest_high != conns:
            high = plan.manifest_high
            endpoints.append((f"get_digest_{high}", "GET", digest_path, f"GET by digest, {high} connections",
                              "wrk", high))
        for key, method, path, label, tool, connections in endpoints:
            results: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
            for rep in range(plan.load_reps):
                for kind in ctx.order(rep):
                    mirror = mirrors[kind]
                    mirror.hop.reset()
                    with ctx.profiled(mirror, f"manifests-{key}-{rep}"):
                        if tool == "wrk":
                            r = clients.run_wrk(mirror.url + path, method, MANIFEST_ACCEPT, plan.load_seconds,
                                                connections, 2, script_dir)
                        else:
                            r = clients.run_head_load(mirror.url + path, method, MANIFEST_ACCEPT,
                                                      plan.load_seconds, connections, 2)
                    mirror.hop.wait_idle(timeout=60)
                    r["upstream"] = mirror.hop.count()
                    r.pop("text", None)
                    results[kind].append(r)
                    if r["errors"]:
                        problems.append(f"{kind} {label}: {r['errors']} errors {r['error_detail']}")
                    ctx.log(f"{label} {kind}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                            f"p99 {r['p99_ms']:.2f} ms, {r['upstream']} upstream requests, {r['errors']} errors")

            def pick(field_name: str, results: dict[str, list[dict[str, Any]]] = results) -> tuple[float, float]:
                return (median(r[field_name] for r in results["ocicache"]),
                        median(r[field_name] for r in results["distribution"]))

            tool_name = "wrk" if tool == "wrk" else "head_load.py"
            section.add(f"{key}_rps", f"{label}: requests/s [{tool_name}]", "req/s", "higher", *pick("rps"))
            section.add(f"{key}_p50", f"{label}: p50 latency", "ms", "lower", *pick("p50_ms"), floor=0.01)
            section.add(f"{key}_p99", f"{label}: p99 latency", "ms", "lower", *pick("p99_ms"), floor=0.01)
            section.add(f"{key}_upstream", f"{label}: upstream requests during the run", "requests", "lower",
                        *pick("upstream"))
            section.details[key] = results
        section.notes.append(
            f"`wrk -t2 -c{plan.load_connections} -d{plan.load_seconds:g}s --latency -s script.lua` "
            + (f"(and `-c{plan.manifest_high}` for GET by digest) " if plan.manifest_high != plan.load_connections
               else "")
            + "(method and "
            f"`Accept` set in Lua); median of {plan.load_reps} run(s). The manifest was fetched once by tag "
            "and once by digest through each mirror first; ocicache's tag TTL is 5 minutes, so every tag "
            "request in the runs is within it."
        )
        section.notes.append(
            f"For scale, the upstream itself (docker-registry through the counting hop, "
            f"{plan.load_connections} connections) answers HEAD by tag at {baseline['rps']:,.0f} req/s, "
            f"p50 {baseline['p50_ms']:.1f} ms: distribution makes one such round trip per tag request."
        )
        if head_tool != "wrk":
            section.notes.append(
                "HEAD by tag is driven by `bench/head_load.py` (2 processes, keep-alive, closed loop, "
                f"{plan.load_connections} connections in all), not wrk: wrk 4.1 never completes a HEAD "
                "request (its parser waits for the body the `Content-Length` announces; wg/wrk#198). "
                "GET by tag, measured with wrk, takes the same tag path in both servers."
            )
        if problems:
            section.error = "; ".join(problems[:5])
    finally:
        for mirror in mirrors.values():
            ctx.rig.stop_mirror(mirror)
    return section


# --- 4. memory ---------------------------------------------------------------


def memory(ctx: Context) -> Section:
    plan = ctx.plan
    n = plan.slow_clients
    rate_mb = plan.slow_rate / 1e6
    section = Section("memory", f"4. Memory: peak RSS with {n} slow clients (~{rate_mb:g} MB/s each)")
    problems: list[str] = []
    runs: list[dict[str, Any]] = []
    refetched: list[str] = []
    for size in plan.memory_sizes:
        image = ctx.image(f"big{size}")
        blob = image.layers[0]
        # Clients stop after slow_window seconds if reading it all takes longer.
        window = plan.slow_window if plan.slow_window and blob.size / plan.slow_rate > plan.slow_window else 0.0
        timeout = (window or 3 * blob.size / plan.slow_rate) + 60
        peaks: dict[str, dict[str, float]] = {k: {} for k in KINDS}
        for kind in KINDS if size % 2 == 0 else tuple(reversed(KINDS)):
            mirror = ctx.mirror(kind)
            try:
                _settle()
                for phase in ("cold", "warm"):
                    mirror.hop.reset()
                    with server_procs.RssSampler(mirror.pid) as sampler, \
                            ctx.profiled(mirror, f"memory-{size}-{phase}"):
                        t0, report = clients.slow_readers(_blob_url(mirror, image), n, plan.slow_rate, timeout,
                                                          seconds=window)
                    mirror.hop.wait_idle(timeout=300)
                    bad = [(i, p) for i, p in ((i, _check_fetch(r, blob.size, blob.digest))
                                               for i, r in enumerate(report["clients"])) if p]
                    for i, p in bad:
                        problems.append(f"{kind} {size} MiB {phase}, client {i}: {p}")
                    rss = sampler.result()
                    peaks[kind][phase] = rss["peak_mib"]
                    cut = sum(1 for r in report["clients"] if r.get("cut"))
                    runs.append({"kind": kind, "size_mib": size, "phase": phase, **rss,
                                 "wall_s": report["t_end"] - t0, "ok_clients": n - len(bad), "cut_clients": cut,
                                 "read_mib": round(sum(r.get("bytes") or 0 for r in report["clients"]) / MiB, 1),
                                 "hashed_clients": sum(1 for r in report["clients"] if r.get("sha256")),
                                 "upstream_gets": mirror.hop.count("GET", "/blobs/"),
                                 "upstream_bytes": mirror.hop.bytes_sent_for(blob.digest)})
                    ctx.log(f"memory {size} MiB {phase} {kind}: peak {rss['peak_mib']} MiB "
                            f"(baseline {rss['baseline_mib']}), {report['t_end'] - t0:.1f}s, "
                            f"{mirror.hop.count('GET', '/blobs/')} upstream GETs")
                    if phase == "cold":
                        _ensure_stored(ctx, mirror, image, refetched)
            finally:
                ctx.rig.stop_mirror(mirror)
        for phase in ("cold", "warm"):
            section.add(f"peak_rss_{phase}_{size}", f"{size} MiB blob, {phase}: peak RSS", "MiB", "lower",
                        peaks["ocicache"].get(phase, 0.0), peaks["distribution"].get(phase, 0.0), floor=0.1)
    section.details["runs"] = runs
    baselines = ", ".join(
        f"{r['kind']} {r['size_mib']} MiB {r['phase']} {r['baseline_mib']}"
        for r in runs)
    section.notes.append(
        f"Peak RSS of the server process (`VmHWM` reset through `/proc/PID/clear_refs` before each "
        f"phase, plus `VmRSS` sampled every 50 ms) while {n} clients read the blob at ~{rate_mb:g} MB/s "
        "each (64 KiB `recv`s paced by a timer, 128 KiB `SO_RCVBUF`), first cold (fresh cache), then warm. "
        f"Every client's byte count checked, every 8th client's SHA-256. RSS before each phase (MiB): {baselines}."
    )
    windowed = [size for size in plan.memory_sizes
                if plan.slow_window and size * MiB / plan.slow_rate > plan.slow_window]
    if windowed:
        section.notes.append(
            f"Blobs of {', '.join(f'{s} MiB' for s in windowed)} would take longer than {plan.slow_window:g} s "
            f"to read at this pace: their clients read for {plan.slow_window:g} s and then close (the status, "
            "`Content-Length` and byte counts are checked; no SHA-256). The cold fetch from upstream is "
            "well within that window, so the peak covers it and the steady state after it."
        )
    if refetched:
        section.notes.append(
            "Not stored after the cold phase (its clients left before the end), so fetched once in full "
            "before the warm phase: " + ", ".join(refetched) + "."
        )
    if problems:
        section.error = f"{len(problems)} client(s) failed: " + "; ".join(problems[:5])
    return section


def _ensure_stored(ctx: Context, mirror: Mirror, image: Image, refetched: list[str]) -> None:
    """
    Wait for the mirror to hold the blob after a cold phase; if its
    clients were cut off before the end and it gave up storing (distribution
    stores what a client reads), fetch it once in full first.
    """
    try:
        mirror.wait_blob_stored(image.layers[0], timeout=30)
    except TimeoutError:
        refetched.append(f"{mirror.kind} {image.layers[0].size // MiB} MiB")
        ctx.log(f"{mirror.kind} did not store {image.layers[0].digest[:19]} after the cold phase; fetching it")
        _warm_blob(ctx, mirror, image)


# --- 5. containerd -------------------------------------------------------------


def containerd(ctx: Context) -> Section:
    plan = ctx.plan
    image = ctx.image("layered")
    ref = f"docker.io/{image.repo}:{image.tag}"
    total_mib = sum(b.size for b in image.blobs) / MiB
    section = Section(
        "containerd",
        f"5. containerd: `ctr images pull` of a {len(image.layers)}-layer image ({total_mib:.0f} MiB)",
    )
    m: dict[str, dict[str, list[float]]] = {
        key: {k: [] for k in KINDS}
        for key in ("cold", "warm", "cold_requests", "warm_requests", "cold_bytes")
    }
    problems: list[str] = []
    for rep in range(plan.ctr_reps):
        for kind in ctx.order(rep):
            mirror = ctx.mirror(kind)
            try:
                hosts = write_hosts_dir(os.path.join(mirror.workdir, "hosts"), "docker.io", mirror.url)
                _settle()
                for phase in ("cold", "warm"):
                    ctrd = ctx.rig.containerd()
                    try:
                        mirror.hop.reset()
                        started = time.monotonic()
                        with ctx.profiled(mirror, f"ctr-{phase}-{rep}"):
                            ctrd.pull(ref, hosts_dir=hosts, timeout=600)
                        elapsed = time.monotonic() - started
                        digest = ctrd.image_digest(ref)
                        if digest != image.manifest_digest:
                            problems.append(f"{kind} {phase}: pulled {digest}, expected {image.manifest_digest}")
                    finally:
                        ctx.rig.stop_containerd(ctrd)
                    mirror.hop.wait_idle(timeout=300)
                    requests = mirror.hop.count()
                    up_bytes = sum(mirror.hop.bytes_sent_for(b.digest) for b in image.blobs)
                    m[phase][kind].append(elapsed)
                    m[f"{phase}_requests"][kind].append(requests)
                    if phase == "cold":
                        m["cold_bytes"][kind].append(up_bytes / MiB)
                        for blob in image.blobs:
                            mirror.wait_blob_stored(blob)
                    ctx.log(f"ctr pull {phase} {kind}: {elapsed:.2f}s, {requests} upstream requests, "
                            f"{up_bytes / MiB:.1f} MiB")
            finally:
                ctx.rig.stop_mirror(mirror)
    def pick(key: str) -> tuple[float, float]:
        return median(m[key]["ocicache"]), median(m[key]["distribution"])

    section.add("cold_pull", "cold pull (fresh mirror cache, fresh containerd)", "s", "lower", *pick("cold"),
                floor=0.001, samples=m["cold"])
    section.add("warm_pull", "warm pull (fresh containerd)", "s", "lower", *pick("warm"), floor=0.001,
                samples=m["warm"])
    section.add("cold_upstream_requests", "cold pull: upstream requests", "requests", "lower",
                *pick("cold_requests"))
    section.add("cold_upstream_bytes", "cold pull: upstream blob bytes", "MiB", "lower", *pick("cold_bytes"),
                floor=0.01)
    section.add("warm_upstream_requests", "warm pull: upstream requests", "requests", "lower",
                *pick("warm_requests"))
    section.notes.append(
        f"`ctr images pull --hosts-dir` (hosts.toml sends docker.io to the mirror; containerd adds "
        f"`?ns=docker.io`), unpacked; a fresh containerd root for every pull; median of {plan.ctr_reps} "
        f"run(s); layers {', '.join(str(s) for s in plan.ctr_layers)} MiB, uncompressed."
    )
    if problems:
        section.error = "; ".join(problems[:5])
    return section


SCENARIOS: dict[str, tuple[str, Callable[[Context], Section]]] = {
    "throughput": ("1. Warm blob throughput", warm_throughput),
    "cold": ("2. Cold blob", cold_blob),
    "manifests": ("3. Warm manifests", warm_manifests),
    "memory": ("4. Memory", memory),
    "containerd": ("5. containerd", containerd),
}

CHOICES = (*THROUGHPUT_PARTS, *(name for name in SCENARIOS if name != "throughput"))
"""What C{--only} takes: the parts of scenario 1, then the other scenarios."""


# --- targets -------------------------------------------------------------------


def evaluate_targets(sections: list[Section], plan: Plan, workers: tuple[str, ...] = ("1",)) -> list[Target]:
    """
    The targets of issues 10 and 23, each met or missed from what was
    measured (a target whose measurement did not run is left out, never
    guessed); those of a measurement taken with several C{workers}
    settings once for each, named with it.
    """
    by_key = {s.key: s for s in sections}
    targets: list[Target] = []
    named = len(workers) > 1 or workers[0] != "1"

    def comp(section: str, key: str) -> Any:
        s = by_key.get(section)
        return s.get(key) if s is not None else None

    def each(section: str, key: str) -> list[tuple[str, str, Comparison]]:
        """
        C{(setting, " [workers = ...]" or "", comparison with that
        setting's value)} for every workers setting measured.
        """
        c = comp(section, key)
        if c is None:
            return []
        found = [(w, v) for w in workers if (v := c.with_workers(w)) is not None] if c.workers else [(workers[0], c)]
        return [(w, f" [{workers_label(w)}]" if named else "", v) for w, v in found]

    # Warm throughput: 1 and `parallel` connections, against the limit and distribution.
    for key, label in (("one_connection", "1 connection"),
                       (f"{plan.parallel}_connections", f"{plan.parallel} connections")):
        for _, tag, c in each("warm_throughput", key):
            what = f"warm throughput, {label}, {plan.blob_mib} MiB blob{tag}"
            if c.nginx is not None:
                targets.append(_of_limit(f"{what}: ≥ 0.95× nginx (sendfile)", c))
            targets.append(Target(
                f"{what}: ≥ 1.05× distribution",
                c.ratio >= 1.05,
                f"ocicache {c.ocicache:,.0f} MiB/s, distribution {c.distribution:,.0f} MiB/s ({c.ratio:.2f}×)",
            ))
    # Issue 23: 8 clients of the scale curve at the limit, with every workers setting.
    for _, tag, c in each("warm_throughput", f"scale_{plan.parallel}_mib_s"):
        if c.nginx is not None:
            targets.append(_of_limit(f"warm, {plan.parallel} clients (scale curve){tag}: ≥ 0.95× nginx (sendfile)",
                                     c))
    # Server CPU per GiB, warm.
    for key, label in (("cpu_per_gib_1", "1 connection"),
                       (f"cpu_per_gib_{plan.parallel}", f"{plan.parallel} connections")):
        for _, tag, c in each("warm_throughput", key):
            targets.append(Target(
                f"server CPU per GiB, warm, {label}{tag}: ≤ distribution's",
                c.ocicache <= c.distribution,
                f"ocicache {c.ocicache:.2f} s/GiB, distribution {c.distribution:.2f} s/GiB",
            ))
    for setting in workers:
        curve = [(n, _for(comp("warm_throughput", f"scale_{n}_cpu_per_gib"), setting)) for n in plan.scale_clients]
        measured = [(n, c) for n, c in curve if c is not None]
        if measured:
            tag = f" [{workers_label(setting)}]" if named else ""
            targets.append(Target(
                f"server CPU per GiB, warm, {', '.join(str(n) for n, _ in measured)} clients{tag}: "
                "≤ distribution's at each",
                all(c.ocicache <= c.distribution for _, c in measured),
                "; ".join(f"{n}: ocicache {c.ocicache:.2f}, distribution {c.distribution:.2f}" for n, c in measured)
                + " s/GiB",
            ))
    # Cold.
    for _, tag, wall in each("cold_blob", "wall_1"):
        targets.append(Target(
            f"cold, 1 client{tag}: wall time ≤ distribution's (≥ 1.0×)",
            wall.ocicache <= wall.distribution,
            f"ocicache {wall.ocicache:.2f} s, distribution {wall.distribution:.2f} s ({wall.fmt_ratio()})",
        ))
    n = max(plan.cold_clients)
    for _, tag, up in each("cold_blob", f"upstream_bytes_{n}"):
        targets.append(Target(
            f"cold, {n} clients{tag}: upstream bytes = 1.0× blob (distribution ~{n + 1}×)",
            abs(up.ocicache - 1.0) < 0.005,
            f"ocicache {up.ocicache:.2f}×, distribution {up.distribution:.2f}×",
        ))
    for setting, tag, wall in each("cold_blob", f"wall_{n}"):
        gets = _for(comp("cold_blob", f"upstream_gets_{n}"), setting)
        if gets is not None:
            targets.append(Target(
                f"cold, {n} clients{tag}: ≥ 1.3× distribution (wall time) with 1 upstream GET",
                wall.ratio >= 1.3 and gets.ocicache == 1,
                f"ocicache {wall.ocicache:.2f} s, distribution {wall.distribution:.2f} s ({wall.ratio:.2f}×); "
                f"upstream blob GETs (median): ocicache {gets.ocicache:g}, distribution {gets.distribution:g}",
            ))
    cold = by_key.get("cold_blob")
    if cold is not None:
        targets += _across_workers(cold.details.get("runs", []), n, workers)
    # Manifests.
    up = comp("warm_manifests", "head_tag_upstream")
    rps = comp("warm_manifests", "head_tag_rps")
    if up is not None:
        targets.append(Target(
            "HEAD by tag: 0 upstream requests within the TTL",
            up.ocicache == 0,
            f"ocicache {up.ocicache:.0f}, distribution {up.distribution:.0f}",
        ))
    if rps is not None:
        targets.append(Target(
            "HEAD by tag: requests/s ≥ distribution's",
            rps.ratio >= 1.0,
            f"ocicache {rps.ocicache:,.0f}/s, distribution {rps.distribution:,.0f}/s ({rps.ratio:.2f}×)",
        ))
    # Memory.
    mem = by_key.get("memory")
    if mem is not None and mem.comparisons:
        peaks = {c.key: c.ocicache for c in mem.comparisons}
        worst = max(peaks.values())
        targets.append(Target(
            f"memory: ocicache peak RSS ≤ 100 MiB with {plan.slow_clients} slow clients",
            worst <= 100.0,
            "ocicache " + ", ".join(f"{c.label.split(':')[0]} {c.ocicache:.0f} MiB" for c in mem.comparisons)
            + "; distribution up to " + f"{max(c.distribution for c in mem.comparisons):.0f} MiB",
        ))
        sizes = sorted(plan.memory_sizes)
        if len(sizes) > 1:
            growth = max(
                peaks.get(f"peak_rss_{phase}_{sizes[-1]}", 0.0) - peaks.get(f"peak_rss_{phase}_{sizes[0]}", 0.0)
                for phase in ("cold", "warm")
            )
            by_size = ", ".join(
                f"{_size(size)} {max(peaks.get(f'peak_rss_{phase}_{size}', 0.0) for phase in ('cold', 'warm')):.0f}"
                for size in sizes)
            targets.append(Target(
                f"memory: flat in blob size, {_size(sizes[0])} to {_size(sizes[-1])}",
                growth <= 16.0,
                f"ocicache peak grows {growth:+.0f} MiB from a {_size(sizes[0])} to a {_size(sizes[-1])} blob "
                f"(flat: ≤ 16 MiB); peak by size (MiB): {by_size}",
            ))
    # Idle connections.
    idle_rss = comp("warm_throughput", "idle_rss")
    idle = comp("warm_throughput", "idle_mib_s")
    alone = comp("warm_throughput", "idle_base_mib_s")
    if idle_rss is not None:
        targets.append(Target(
            f"{plan.idle_connections} idle connections: ocicache peak RSS ≤ 150 MiB "
            f"(with {plan.idle_active} clients downloading)",
            idle_rss.ocicache <= 150.0,
            f"ocicache {idle_rss.ocicache:.0f} MiB, distribution {idle_rss.distribution:.0f} MiB",
        ))
    if idle is not None and alone is not None:
        change = idle.ocicache / alone.ocicache - 1 if alone.ocicache else -1.0
        targets.append(Target(
            f"{plan.idle_connections} idle connections: {plan.idle_active} clients' throughput within 10% "
            "of the run without them",
            abs(change) <= 0.10,
            f"ocicache {idle.ocicache:,.0f} MiB/s with them, {alone.ocicache:,.0f} MiB/s without "
            f"({100 * change:+.1f}%)",
        ))
    # HTTPS: 1.0× with one worker; with more (issue 23), 1.2×.
    for key, label in (("tls_one_connection", "1 connection"),
                       (f"tls_{plan.parallel}_connections", f"{plan.parallel} connections")):
        for setting, tag, c in each("warm_throughput", key):
            goal = 1.0 if setting == "1" else 1.2
            targets.append(Target(
                f"HTTPS warm throughput, {label}{tag}: ≥ {goal:.1f}× distribution",
                c.ratio >= goal,
                f"ocicache {c.ocicache:,.0f} MiB/s, distribution {c.distribution:,.0f} MiB/s ({c.ratio:.2f}×)",
            ))
    return targets


def _for(c: Comparison | None, setting: str) -> Comparison | None:
    return c.with_workers(setting) if c is not None else None


def _of_limit(name: str, c: Comparison) -> Target:
    fraction = c.fraction_of_limit or 0.0
    return Target(name, fraction >= 0.95,
                  f"ocicache {c.ocicache:,.0f} MiB/s, nginx {c.nginx or 0.0:,.0f} MiB/s ({fraction:.2f}× the limit)")


def _across_workers(runs: list[dict[str, Any]], n: int, workers: tuple[str, ...]) -> list[Target]:
    """
    Issue 23's cold goal for each setting of more than one worker: C{n}
    clients spread over the workers, one upstream GET in every run (not
    the median: one run with two is a miss).  Not measured (C{met} None)
    if no run's clients reached more than one worker: the kernel chose,
    and the runs then said nothing about singleflight across workers.
    """
    targets: list[Target] = []
    for setting in workers:
        mine = [r for r in runs if r.get("kind") == "ocicache" and r.get("workers") == setting
                and r.get("clients") == n and r.get("worker_processes", 1) > 1]
        if not mine:
            continue
        spread = [r for r in mine if sum(1 for c in r.get("clients_per_worker", []) if c) > 1]
        gets = [int(r["upstream_gets"]) for r in mine]
        detail = (f"upstream blob GETs by run: {', '.join(str(g) for g in gets)}; clients per worker by run: "
                  + ", ".join(_spread_text(r.get("clients_per_worker", [])) for r in mine))
        targets.append(Target(
            f"cold, {n} clients spread over the workers [{workers_label(setting)}]: 1 upstream GET",
            False if any(g != 1 for g in gets) else (True if spread else None),
            detail if spread else detail + " (no run reached more than one worker)",
        ))
    return targets


def _size(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"
