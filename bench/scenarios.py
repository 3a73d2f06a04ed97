"""
The five measurements.  Each takes a L{Context} and returns a
L{bench.report.Section}; each starts its own mirrors with fresh caches and
stops them, whatever happens.

Servers are measured one at a time, alternating which goes first from one
repetition to the next, so slow drift on a shared machine does not
favour either.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ocitest import http_request
from ocitest.containerd import write_hosts_dir
from ocitest.images import MEDIA, Image

from . import clients
from .report import Section, Target, median
from .rig import KINDS, Mirror, Rig

__all__ = ["PLANS", "Context", "Plan", "SCENARIOS", "evaluate_targets", "plan_for"]

MiB = 1 << 20
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


PLANS = {
    "full": Plan("full", 256, 5, 8, (1, 16), 3, 5.0, 3, 64, (64, 256), 64, 5e6, (16,) * 8, 3),
    "quick": Plan("quick", 64, 3, 8, (1, 16), 2, 3.0, 1, 64, (16, 64), 16, 5e6, (8,) * 4, 1),
    "tiny": Plan("tiny", 4, 2, 8, (1, 16), 1, 1.0, 1, 64, (2, 4), 4, 5e6, (1, 1, 1), 1),
}


def plan_for(mode: str, size_mib: int | None = None, slow_clients: int | None = None) -> Plan:
    plan = PLANS[mode]
    if size_mib:
        sizes = tuple(sorted({*(s for s in plan.memory_sizes if s < size_mib), size_mib}))
        plan = Plan(**{**asdict(plan), "blob_mib": size_mib, "memory_sizes": sizes})
    if slow_clients:
        plan = Plan(**{**asdict(plan), "slow_clients": slow_clients})
    return plan


@dataclass
class Context:
    rig: Rig
    plan: Plan
    log: Log
    workdir: str
    profile_dir: str | None = None
    profiles: dict[str, Any] = field(default_factory=dict)

    def image(self, key: str) -> Image:
        return self.rig.images[key]

    def order(self, rep: int) -> tuple[str, ...]:
        return KINDS if rep % 2 == 0 else tuple(reversed(KINDS))

    @contextlib.contextmanager
    def profiled(self, mirror: Mirror, name: str) -> Iterator[None]:
        """
        py-spy on ocicache during the block, when C{--profile} asked.
        """
        if self.profile_dir is None or mirror.kind != "ocicache":
            yield
            return
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


def warm_throughput(ctx: Context) -> Section:
    plan = ctx.plan
    image = ctx.image(f"big{plan.blob_mib}")
    blob = image.layers[0]
    size_mib = blob.size / MiB
    section = Section("warm_throughput", f"1. Warm blob throughput ({plan.blob_mib} MiB blob)")
    mirrors: dict[str, Mirror] = {}
    try:
        for kind in KINDS:
            mirrors[kind] = ctx.rig.mirror(kind)
            _warm_blob(ctx, mirrors[kind], image)
        _settle()
        one: dict[str, list[float]] = {k: [] for k in KINDS}
        many: dict[str, list[float]] = {k: [] for k in KINDS}
        # Server CPU seconds and bytes served, summed over the runs (the
        # clock tick is 10 ms: one run alone is too coarse).
        cpu_one = {k: 0.0 for k in KINDS}
        cpu_many = {k: 0.0 for k in KINDS}
        served_one = {k: 0 for k in KINDS}
        served_many = {k: 0 for k in KINDS}
        problems: list[str] = []
        for rep in range(plan.throughput_reps):
            for kind in ctx.order(rep):
                url = _blob_url(mirrors[kind], image)
                before = clients.cpu_seconds(mirrors[kind].pid)
                with ctx.profiled(mirrors[kind], f"warm-1conn-{rep}"):
                    r = clients.curl_get(url)
                cpu_one[kind] += clients.cpu_seconds(mirrors[kind].pid) - before
                served_one[kind] += r.bytes
                if r.error or r.status != 200 or r.bytes != blob.size:
                    problems.append(f"{kind} 1 connection: HTTP {r.status}, {r.bytes} bytes {r.error}")
                else:
                    one[kind].append(size_mib / r.total)
            for kind in ctx.order(rep):
                url = _blob_url(mirrors[kind], image)
                before = clients.cpu_seconds(mirrors[kind].pid)
                with ctx.profiled(mirrors[kind], f"warm-{plan.parallel}conn-{rep}"):
                    wall, results = clients.curl_parallel(url, plan.parallel)
                cpu_many[kind] += clients.cpu_seconds(mirrors[kind].pid) - before
                served_many[kind] += sum(r.bytes for r in results)
                bad = [r for r in results if r.error or r.status != 200 or r.bytes != blob.size]
                if bad:
                    problems.append(f"{kind} {plan.parallel} connections: {len(bad)} failed: {bad[0]}")
                else:
                    many[kind].append(plan.parallel * size_mib / wall)
            ctx.log(f"warm throughput rep {rep + 1}/{plan.throughput_reps}: "
                    + ", ".join(f"{k} {one[k][-1:]} / {many[k][-1:]}" for k in KINDS))
        upstream = {k: mirrors[k].hop.count() for k in KINDS}
        section.add("one_connection", "1 connection", "MiB/s", "higher",
                    median(one["ocicache"]), median(one["distribution"]), samples=one)
        section.add(f"{plan.parallel}_connections", f"{plan.parallel} connections, aggregate", "MiB/s",
                    "higher", median(many["ocicache"]), median(many["distribution"]), samples=many)
        def per_gib(cpu: dict[str, float], served: dict[str, int], kind: str) -> float:
            return cpu[kind] / (served[kind] / (1 << 30)) if served[kind] else 0.0

        section.add("cpu_per_gib_1", "server CPU per GiB served, 1 connection", "CPU s/GiB", "lower",
                    per_gib(cpu_one, served_one, "ocicache"), per_gib(cpu_one, served_one, "distribution"),
                    floor=0.001, digits=2)
        section.add(f"cpu_per_gib_{plan.parallel}", f"server CPU per GiB served, {plan.parallel} connections",
                    "CPU s/GiB", "lower", per_gib(cpu_many, served_many, "ocicache"),
                    per_gib(cpu_many, served_many, "distribution"), floor=0.001, digits=2)
        section.add("upstream_requests", "upstream requests during the warm runs", "requests", "lower",
                    upstream["ocicache"], upstream["distribution"])
        section.notes.append(
            f"`curl -o /dev/null` per connection; median of {plan.throughput_reps} runs; 1 connection from "
            f"curl's `time_total`, {plan.parallel} connections from the wall time of all "
            f"{plan.parallel} processes. The blob was fetched and SHA-256-verified once through each "
            "mirror first, and stored by both before timing. Server CPU is user + system time of the server "
            "process (all threads, from `/proc/PID/stat`) over all runs, divided by the bytes served."
        )
        if problems:
            section.error = "; ".join(problems[:5])
    finally:
        for mirror in mirrors.values():
            ctx.rig.stop_mirror(mirror)
    return section


# --- 2. cold blob ------------------------------------------------------------


def cold_blob(ctx: Context) -> Section:
    plan = ctx.plan
    image = ctx.image(f"big{plan.blob_mib}")
    blob = image.layers[0]
    section = Section("cold_blob", f"2. Cold blob ({plan.blob_mib} MiB), concurrent clients")
    problems: list[str] = []
    runs: list[dict[str, Any]] = []
    for n in plan.cold_clients:
        m: dict[str, dict[str, list[float]]] = {
            key: {k: [] for k in KINDS}
            for key in ("wall", "gets", "bytes", "ttfb_med", "ttfb_max", "requests", "verified", "cpu")
        }
        for rep in range(plan.cold_reps):
            for kind in ctx.order(rep):
                mirror = ctx.rig.mirror(kind)
                try:
                    _settle()
                    mirror.hop.reset()
                    cpu_before = clients.cpu_seconds(mirror.pid)
                    with ctx.profiled(mirror, f"cold-{n}-{rep}"):
                        t0, reports = clients.fetch_many(_blob_url(mirror, image), n)
                    mirror.hop.wait_idle(timeout=300, settle=0.3)
                    m["cpu"][kind].append(clients.cpu_seconds(mirror.pid) - cpu_before)
                    bad = [(i, p) for i, p in ((i, _check_fetch(r, blob.size, blob.digest))
                                               for i, r in enumerate(reports)) if p]
                    for i, p in bad:
                        problems.append(f"{kind}, {n} clients, client {i}: {p}")
                    ends = [r["t_end"] for r in reports if r.get("t_end") is not None]
                    firsts = [r["t_first"] - t0 for r in reports if r.get("t_first") is not None]
                    gets = mirror.hop.count("GET", "/blobs/")
                    up_bytes = mirror.hop.bytes_sent_for(blob.digest)
                    m["wall"][kind].append(max(ends) - t0)
                    m["gets"][kind].append(gets)
                    m["bytes"][kind].append(up_bytes / blob.size)
                    m["ttfb_med"][kind].append(1000 * median(firsts))
                    m["ttfb_max"][kind].append(1000 * max(firsts) if firsts else 0.0)
                    m["requests"][kind].append(mirror.hop.count())
                    m["verified"][kind].append(n - len(bad))
                    runs.append({"kind": kind, "clients": n, "rep": rep, "wall_s": max(ends) - t0,
                                 "upstream_gets": gets, "upstream_bytes": up_bytes,
                                 "upstream_requests": mirror.hop.count(),
                                 "hop": [repr(r) for r in mirror.hop.requests][:50],
                                 "first_byte_ms": [round(1000 * f, 1) for f in firsts],
                                 "verified": n - len(bad)})
                    ctx.log(f"cold {n} client(s) rep {rep + 1} {kind}: {max(ends) - t0:.2f}s, "
                            f"{gets} upstream GETs, {up_bytes / blob.size:.2f}× blob")
                finally:
                    ctx.rig.stop_mirror(mirror)
        who = "1 client" if n == 1 else f"{n} clients"

        def pick(key: str, m: dict[str, dict[str, list[float]]] = m) -> tuple[float, float]:
            return median(m[key]["ocicache"]), median(m[key]["distribution"])

        section.add(f"wall_{n}", f"{who}: wall time until all have every byte", "s", "lower", *pick("wall"),
                    floor=0.001, samples=m["wall"])
        section.add(f"upstream_gets_{n}", f"{who}: upstream blob GETs", "requests", "lower", *pick("gets"))
        section.add(f"upstream_bytes_{n}", f"{who}: upstream bytes", "× blob size", "lower", *pick("bytes"),
                    floor=0.01, digits=2)
        section.add(f"first_byte_median_{n}", f"{who}: first byte, median", "ms", "lower", *pick("ttfb_med"),
                    floor=0.1)
        if n > 1:
            section.add(f"first_byte_max_{n}", f"{who}: first byte, max", "ms", "lower", *pick("ttfb_max"),
                        floor=0.1)
        section.add(f"server_cpu_{n}", f"{who}: server CPU time", "CPU s", "lower", *pick("cpu"), floor=0.01,
                    digits=2)
        section.notes.append(
            f"{who}: SHA-256 verified for " + ", ".join(
                f"{k} {int(sum(m['verified'][k]))}/{n * plan.cold_reps}" for k in KINDS)
            + "; upstream requests of any kind: " + ", ".join(
                f"{k} {median(m['requests'][k]):.0f}" for k in KINDS)
        )
    section.notes.append(
        f"Fresh caches for every run; median of {plan.cold_reps} run(s). Each client is its own "
        "process (Python `http.client`, 1 MiB reads, SHA-256 of the body), all released at one "
        "instant; first-byte time runs from that instant to the first body byte. Upstream traffic is "
        "counted by the hop between the mirror and the upstream, after it has gone quiet (distribution "
        "keeps storing in the background after its clients finish)."
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
    section = Section("warm_manifests", f"3. Warm manifests, {plan.load_connections} connections")
    mirrors: dict[str, Mirror] = {}
    tag_path = f"/v2/{image.repo}/manifests/{image.tag}"
    digest_path = f"/v2/{image.repo}/manifests/{image.manifest_digest}"
    problems: list[str] = []
    try:
        for kind in KINDS:
            mirror = mirrors[kind] = ctx.rig.mirror(kind)
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
        endpoints = [
            ("head_tag", "HEAD", tag_path, "HEAD by tag", head_tool),
            ("get_tag", "GET", tag_path, "GET by tag", "wrk"),
            ("get_digest", "GET", digest_path, "GET by digest", "wrk"),
        ]
        for key, method, path, label, tool in endpoints:
            results: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
            for rep in range(plan.load_reps):
                for kind in ctx.order(rep):
                    mirror = mirrors[kind]
                    mirror.hop.reset()
                    with ctx.profiled(mirror, f"manifests-{key}-{rep}"):
                        if tool == "wrk":
                            r = clients.run_wrk(mirror.url + path, method, MANIFEST_ACCEPT, plan.load_seconds,
                                                plan.load_connections, 2, script_dir)
                        else:
                            r = clients.run_head_load(mirror.url + path, method, MANIFEST_ACCEPT,
                                                      plan.load_seconds, plan.load_connections, 2)
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
            f"`wrk -t2 -c{plan.load_connections} -d{plan.load_seconds:g}s --latency -s script.lua` (method and "
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
    for size in plan.memory_sizes:
        image = ctx.image(f"big{size}")
        blob = image.layers[0]
        timeout = 3 * blob.size / plan.slow_rate + 60
        peaks: dict[str, dict[str, float]] = {k: {} for k in KINDS}
        for kind in KINDS if size % 2 == 0 else tuple(reversed(KINDS)):
            mirror = ctx.rig.mirror(kind)
            try:
                _settle()
                for phase in ("cold", "warm"):
                    mirror.hop.reset()
                    with clients.RssSampler(mirror.pid) as sampler, \
                            ctx.profiled(mirror, f"memory-{size}-{phase}"):
                        t0, report = clients.slow_readers(_blob_url(mirror, image), n, plan.slow_rate, timeout)
                    mirror.hop.wait_idle(timeout=300)
                    bad = [(i, p) for i, p in ((i, _check_fetch(r, blob.size, blob.digest))
                                               for i, r in enumerate(report["clients"])) if p]
                    for i, p in bad:
                        problems.append(f"{kind} {size} MiB {phase}, client {i}: {p}")
                    rss = sampler.result()
                    peaks[kind][phase] = rss["peak_mib"]
                    runs.append({"kind": kind, "size_mib": size, "phase": phase, **rss,
                                 "wall_s": report["t_end"] - t0, "ok_clients": n - len(bad),
                                 "hashed_clients": sum(1 for r in report["clients"] if r.get("sha256")),
                                 "upstream_gets": mirror.hop.count("GET", "/blobs/"),
                                 "upstream_bytes": mirror.hop.bytes_sent_for(blob.digest)})
                    ctx.log(f"memory {size} MiB {phase} {kind}: peak {rss['peak_mib']} MiB "
                            f"(baseline {rss['baseline_mib']}), {report['t_end'] - t0:.1f}s, "
                            f"{mirror.hop.count('GET', '/blobs/')} upstream GETs")
                    if phase == "cold":
                        mirror.wait_blob_stored(blob)
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
    if problems:
        section.error = f"{len(problems)} client(s) failed: " + "; ".join(problems[:5])
    return section


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
            mirror = ctx.rig.mirror(kind)
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


# --- targets -------------------------------------------------------------------


def evaluate_targets(sections: list[Section], plan: Plan) -> list[Target]:
    by_key = {s.key: s for s in sections}
    targets: list[Target] = []

    def comp(section: str, key: str) -> Any:
        s = by_key.get(section)
        return s.get(key) if s is not None else None

    n = max(plan.cold_clients)
    up = comp("cold_blob", f"upstream_bytes_{n}")
    wall = comp("cold_blob", f"wall_{n}")
    if up is not None and wall is not None:
        targets.append(Target(
            f"cold, {n} clients: upstream bytes = 1.0× blob (distribution ~{n + 1}×)",
            abs(up.ocicache - 1.0) < 0.005,
            f"ocicache {up.ocicache:.2f}×, distribution {up.distribution:.2f}×",
        ))
        targets.append(Target(
            f"cold, {n} clients: wall time ≤ distribution's",
            wall.ocicache <= wall.distribution,
            f"ocicache {wall.ocicache:.2f} s, distribution {wall.distribution:.2f} s ({wall.fmt_ratio()})",
        ))
    for key, label in (("one_connection", "1 connection"), (f"{plan.parallel}_connections",
                                                              f"{plan.parallel} connections")):
        c = comp("warm_throughput", key)
        if c is not None:
            targets.append(Target(
                f"warm throughput, {label}: ≥ 1.2× distribution",
                c.ratio >= 1.2,
                f"ocicache {c.ocicache:,.0f} MiB/s, distribution {c.distribution:,.0f} MiB/s ({c.ratio:.2f}×)",
            ))
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
    mem = by_key.get("memory")
    if mem is not None and mem.comparisons:
        peaks = {c.key: c.ocicache for c in mem.comparisons}
        worst = max(peaks.values())
        targets.append(Target(
            "memory: ocicache peak RSS ≤ 100 MiB",
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
            targets.append(Target(
                "memory: flat in blob size",
                growth <= 16.0,
                f"ocicache peak grows {growth:+.0f} MiB from a {sizes[0]} MiB to a {sizes[-1]} MiB blob "
                "(flat: ≤ 16 MiB)",
            ))
    return targets
