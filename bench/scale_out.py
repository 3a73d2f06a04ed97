"""
C{bench/run --scale-out}: several mirror nodes on one S3 store, each with
many clients pulling the same cold blob at once (issue 14):

    upstream (docker-registry, seeded)
      └─ hop "scale-out"  (counts every upstream request of every node)
           ├─ node 0 ─┐
           ├─ node 1 ─┼─ radosgw (one single-node Ceph)   + Redis (ocicache only)
           └─ node N ─┘

Three configurations, each on a bucket of its own:
  - C{fleet}: ocicache nodes in a C{[fleet]} on one Redis, blobs in the
    bucket (C{[storage] backend = "s3"}), no local tier;
  - C{fleet_tier}: the same with a local disk tier (C{local_max_size});
  - C{distribution}: docker-registry proxies on its S3 driver, each under
    its own C{rootdirectory} of the bucket: they share nothing (distribution
    has no cross-node singleflight), so each node is a mirror of its own.

Each repetition starts fresh nodes on a new bucket and an empty Redis,
releases every client at one instant (the cold round: the blob is
nowhere but upstream), waits until the blob is in the bucket, then
releases them again (the warm round: the blob in the bucket).  Upstream
requests are counted by the hop; S3 GETs of the blob by radosgw's own
access log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ocitest import free_port, require_binary, spawn, wait_for, wait_for_http
from ocitest.ceph import Radosgw
from ocitest.daemon import Daemon, Upstream, write_config
from ocitest.hop import Hop
from ocitest.images import Blob, Image
from ocitest.redis import RedisServer
from ocitest.registry import Registry
from ocitest.s3 import Store

from . import clients, server_procs
from .report import Section, Table, Target, median
from .scenarios import Context

__all__ = ["CONFIGS", "REQUIRED", "SCENARIO", "evaluate_targets", "scale_out"]

MiB = 1 << 20

CONFIGS = ("fleet", "fleet_tier", "distribution")
"""The configurations measured, in the order the table shows them."""

LABELS = {
    "fleet": "ocicache fleet, S3, no local tier",
    "fleet_tier": "ocicache fleet, S3 + local tier",
    "distribution": "distribution 2.8, S3 driver",
}

SCENARIO = "scale_out"

REQUIRED = {
    "ceph-mon": "ceph-mon", "ceph-osd": "ceph-osd", "radosgw": "radosgw", "radosgw-admin": "ceph-common",
    "ceph": "ceph-common", "monmaptool": "ceph-base", "ceph-authtool": "ceph-common",
    "redis-server": "redis-server",
}
"""Programs (and their Debian packages) the scale-out needs beyond the other scenarios'."""

_SECRET = "scale-out-bench-fleet-secret"


class S3Registry(Registry):
    """
    docker-registry in proxy mode on its S3 driver (C{storage.s3}), under
    C{rootdirectory} of the bucket; C{redirect.disable}, so that it
    serves the bytes itself as ocicache does, not a 307 to the store.
    """

    def __init__(self, workdir: str, proxy_remote: str, radosgw: Radosgw, bucket: str,
                 rootdirectory: str) -> None:
        super().__init__(workdir, proxy_remote=proxy_remote, log_level="warn")
        self.radosgw = radosgw
        self.bucket = bucket
        self.rootdirectory = rootdirectory

    def config_text(self) -> str:
        filesystem = f"  filesystem:\n    rootdirectory: {self.storage}\n"
        text = super().config_text()
        assert filesystem in text
        return text.replace(filesystem, (
            "  s3:\n"
            f"    accesskey: {self.radosgw.access_key}\n"
            f"    secretkey: {self.radosgw.secret_key}\n"
            "    region: us-east-1\n"
            f"    regionendpoint: {self.radosgw.url}\n"
            f"    bucket: {self.bucket}\n"
            f"    rootdirectory: /{self.rootdirectory}\n"
            "    secure: false\n"
            "    v4auth: true\n"
            "  redirect:\n"
            "    disable: true\n"
        ))

    def start(self, timeout: float = 20.0) -> S3Registry:
        binary = require_binary("docker-registry")
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        # aws-sdk-go (v1, in distribution 2.8) panics at start when AWS_CA_BUNDLE is set, as its
        # own HTTP transport cannot take a CA bundle ("LoadCustomCABundleError"); the store is
        # plain HTTP on loopback anyway.
        env = {name: value for name, value in os.environ.items() if name != "AWS_CA_BUNDLE"}
        self.proc = spawn([binary, "serve", self.config_path], self.log_path, self.workdir, env)
        try:
            wait_for_http(self.url + "/v2/", timeout=timeout, proc=self.proc, log=self.log_path,
                          what="docker-registry (S3)")
        except BaseException:
            self.stop()
            raise
        return self

    def data_key(self, blob: Blob) -> str:
        """Where distribution's storage layout puts the blob's bytes."""
        return f"{self.rootdirectory}/docker/registry/v2/blobs/sha256/{blob.hex[:2]}/{blob.hex}/data"


_Node = Daemon | S3Registry
"""One node of a configuration: both have C{url}, C{proc} and C{stop()}."""


@dataclass
class _Rig:
    """What every configuration shares: one radosgw, one Redis, one counting hop."""

    radosgw: Radosgw
    redis: RedisServer
    hop: Hop
    image: Image
    workdir: str
    started: list[_Node] = field(default_factory=list)
    """Every node started, so that an interrupted run stops them all (stopping twice is harmless)."""

    @property
    def blob(self) -> Blob:
        return self.image.layers[0]


@dataclass
class _Round:
    wall: float
    first_byte_ms: float
    upstream_gets: int
    upstream_requests: int
    upstream_bytes: int
    s3_gets: int
    cpu: float
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall, 4), "first_byte_median_ms": round(self.first_byte_ms, 1),
                "upstream_gets": self.upstream_gets, "upstream_requests": self.upstream_requests,
                "upstream_bytes": self.upstream_bytes, "s3_gets": self.s3_gets,
                "server_cpu_s": round(self.cpu, 3), "problems": self.problems}


def _start_all(starters: list[Callable[[], _Node]]) -> list[_Node]:
    """Start the nodes at once (each start waits for its /v2/); stop them all if one fails."""
    with ThreadPoolExecutor(len(starters)) as pool:
        futures = [pool.submit(start) for start in starters]
    nodes, failure = [], None
    for future in futures:
        try:
            nodes.append(future.result())
        except Exception as e:
            failure = failure or e
    if failure is not None:
        _stop_all(nodes)
        raise failure
    return nodes


def _stop_all(nodes: list[_Node]) -> None:
    with ThreadPoolExecutor(max(1, len(nodes))) as pool:
        list(pool.map(lambda node: node.stop(), nodes))


_REQUEST_LINE = re.compile(r'"GET (/[^ ?"]*)')


def _s3_gets(radosgw: Radosgw, bucket: str, blob: Blob) -> int:
    """
    radosgw's GETs of the blob's object in C{bucket} so far, from its access
    log: the object's path, not a listing whose C{prefix} names it.
    """
    paths = (match.group(1) for match in map(_REQUEST_LINE.search, radosgw.access_log()) if match)
    return sum(1 for path in paths if path.startswith(f"/{bucket}/") and blob.hex in path)


def _s3_gets_settled(radosgw: Radosgw, bucket: str, blob: Blob) -> int:
    # radosgw writes its log from a thread of its own: wait until the count stops moving.
    count = _s3_gets(radosgw, bucket, blob)
    for _ in range(10):
        time.sleep(0.2)
        again = _s3_gets(radosgw, bucket, blob)
        if again == count:
            break
        count = again
    return count


def _problem(report: dict[str, Any], blob: Blob) -> str | None:
    """What is wrong with one client's copy of the blob, if anything."""
    if report.get("error"):
        return str(report["error"])
    if report.get("status") != 200:
        return f"HTTP {report.get('status')}"
    if report.get("bytes") != blob.size:
        return f"{report.get('bytes')} bytes of {blob.size}"
    if report.get("sha256") != blob.digest:
        return f"SHA-256 {str(report.get('sha256'))[:19]}… is not {blob.digest[:19]}…"
    return None


def _round(rig: _Rig, nodes: list[_Node], clients_per_node: int, bucket: str) -> _Round:
    """Every client of every node released at once; the hop counted once it is quiet."""
    blob = rig.blob
    rig.hop.reset()
    s3_before = _s3_gets_settled(rig.radosgw, bucket, blob)
    pids = [node.proc.pid for node in nodes if node.proc is not None]
    cpu_before = sum(server_procs.tree_cpu_seconds(pid) for pid in pids)
    urls = [f"{node.url}/v2/{rig.image.repo}/blobs/{blob.digest}" for node in nodes for _ in range(clients_per_node)]
    t0, reports = clients.fetch_each(urls)
    rig.hop.wait_idle(timeout=300, settle=0.3)
    cpu = sum(server_procs.tree_cpu_seconds(pid) for pid in pids) - cpu_before
    problems = [f"client {i} (node {i // clients_per_node}): {problem}"
                for i, problem in ((i, _problem(r, blob)) for i, r in enumerate(reports)) if problem]
    ends = [r["t_end"] for r in reports if r.get("t_end") is not None]
    firsts = [r["t_first"] - t0 for r in reports if r.get("t_first") is not None]
    return _Round(
        wall=max(ends) - t0 if ends else 0.0,
        first_byte_ms=1000 * median(firsts),
        upstream_gets=rig.hop.count("GET", blob.digest),
        upstream_requests=rig.hop.count(),
        upstream_bytes=rig.hop.bytes_sent_for(blob.digest),
        s3_gets=_s3_gets_settled(rig.radosgw, bucket, blob) - s3_before,
        cpu=cpu,
        problems=problems,
    )


@contextmanager
def _bucket(rig: _Rig, config: str, rep: int) -> Iterator[Store]:
    """
    A new bucket for one repetition; afterwards its objects, uploads and the
    bucket itself are purged and radosgw's garbage collected at once (its
    memstore OSD would otherwise fill up over a full run).
    """
    name = f"bench-{config.replace('_', '-')}-{rep}-{uuid.uuid4().hex[:8]}"
    store = Store(rig.radosgw, name, os.path.join(rig.workdir, "keys"))
    try:
        yield store
    finally:
        admin = ["radosgw-admin", "-c", rig.radosgw.conf, "-n", "client.admin"]
        subprocess.run([*admin, "bucket", "rm", f"--bucket={name}", "--purge-objects"],
                       capture_output=True, timeout=120)
        subprocess.run([*admin, "gc", "process", "--include-all"], capture_output=True, timeout=120)


def _fleet_nodes(ctx: Context, rig: _Rig, store: Store, workdir: str, tier: bool) -> list[_Node]:
    secret = os.path.join(workdir, "fleet.secret")
    os.makedirs(workdir, exist_ok=True)
    with open(secret, "w") as f:
        f.write(_SECRET + "\n")
    # The daemon's own part size, not the test harness's small one.
    storage = {k: v for k, v in store.table.items() if k != "upload_part_size"}
    if tier:
        storage["local_max_size"] = f"{max(16, 4 * ctx.plan.blob_mib)}MiB"

    def starter(index: int) -> Callable[[], _Node]:
        def start() -> _Node:
            node_dir = os.path.join(workdir, f"node{index}")
            port, internal = free_port(), free_port()
            config = write_config(
                os.path.join(node_dir, "ocicache.toml"), port=port, cache_dir=os.path.join(node_dir, "cache"),
                upstreams=[Upstream("docker.io", rig.hop.url, default=True)], tag_ttl="5m",
                server_extra={"drain_timeout": "1s"},
                extra_tables={"fleet": {
                    "redis": rig.redis.url, "node": f"node{index}",
                    "internal_listen": f"tcp:{internal}:interface=127.0.0.1",
                    "peer_url": f"http://127.0.0.1:{internal}", "secret_file": secret, "lock_ttl": "10s",
                }, "storage": storage},
            )
            daemon = Daemon(config, port=port, workdir=node_dir)
            rig.started.append(daemon)
            daemon.start(timeout=60)
            try:
                wait_for(lambda: "is in the fleet" in daemon.log_text(), 30, what=f"node{index} to join the fleet")
            except BaseException:
                daemon.stop()
                raise
            return daemon
        return start

    return _start_all([starter(i) for i in range(ctx.plan.scale_out_nodes)])


def _distribution_nodes(ctx: Context, rig: _Rig, store: Store, workdir: str) -> list[_Node]:
    def starter(index: int) -> Callable[[], _Node]:
        def start() -> _Node:
            registry = S3Registry(os.path.join(workdir, f"node{index}"), rig.hop.url, rig.radosgw, store.bucket,
                                  f"node{index}")
            rig.started.append(registry)
            return registry.start(timeout=60)
        return start

    return _start_all([starter(i) for i in range(ctx.plan.scale_out_nodes)])


def _wait_stored(ctx: Context, config: str, store: Store, nodes: list[_Node], blob: Blob) -> list[str]:
    """
    Wait until the bucket holds the blob whole (ocicache: one object under
    its prefix, no upload open; distribution: each node's own copy).
    Returns the keys still missing after the wait, if any.
    """
    if config == "distribution":
        keys = [node.data_key(blob) for node in nodes if isinstance(node, S3Registry)]
    else:
        keys = [store.key(blob)]

    def missing() -> list[str]:
        listed: dict[str, int] = {}
        token: dict[str, str] = {}
        while True:
            page = store.client.list_objects_v2(Bucket=store.bucket, **token)
            listed.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
        return [key for key in keys if listed.get(key) != blob.size] + [u["Key"] for u in uploads
                                                                          if config != "distribution"]

    try:
        wait_for(lambda: not missing(), 120, interval=0.2, what=f"{config} to store the blob in the bucket")
    except Exception:
        ctx.log(f"scale-out {config}: not in the bucket after 120 s: {missing()}")
    return missing()


def _one_rep(ctx: Context, rig: _Rig, config: str, rep: int) -> dict[str, Any]:
    plan = ctx.plan
    workdir = os.path.join(rig.workdir, f"{config}-{rep}")
    rig.redis.command("FLUSHALL")
    with _bucket(rig, config, rep) as store:
        if config == "distribution":
            nodes = _distribution_nodes(ctx, rig, store, workdir)
        else:
            nodes = _fleet_nodes(ctx, rig, store, workdir, tier=config == "fleet_tier")
        try:
            time.sleep(0.5)  # the nodes' start-up work (the first janitor pass) before the clients
            cold = _round(rig, nodes, plan.scale_out_clients, store.bucket)
            missing = _wait_stored(ctx, config, store, nodes, rig.blob)
            warm = _round(rig, nodes, plan.scale_out_clients, store.bucket)
        finally:
            _stop_all(nodes)
            for index in range(len(nodes)):
                shutil.rmtree(os.path.join(workdir, f"node{index}", "cache"), ignore_errors=True)
                shutil.rmtree(os.path.join(workdir, f"node{index}", "storage"), ignore_errors=True)
    ctx.log(f"scale-out {config} rep {rep + 1}: cold {cold.wall:.2f}s, {cold.upstream_gets} upstream GETs; "
            f"warm {warm.wall:.2f}s, {warm.s3_gets} S3 GETs, {warm.upstream_requests} upstream requests")
    return {"config": config, "rep": rep, "cold": cold, "warm": warm, "missing_after_cold": missing}


def _throughput(clients_n: int, size: int, wall: float) -> float:
    """Every client's bytes over the round's wall time, in MiB/s."""
    return clients_n * size / MiB / wall if wall > 0 else 0.0


def scale_out(ctx: Context) -> Section:
    plan = ctx.plan
    image = ctx.image(f"big{plan.blob_mib}")
    blob = image.layers[0]
    n, c = plan.scale_out_nodes, plan.scale_out_clients
    section = Section(SCENARIO, f"Scale-out: {n} nodes × {c} clients, one cold {plan.blob_mib} MiB blob, S3 (radosgw)")
    assert ctx.rig.upstream is not None
    workdir = os.path.join(ctx.workdir, "scale-out")
    radosgw = Radosgw(os.path.join(workdir, "ceph"))
    redis = RedisServer(os.path.join(workdir, "redis"))
    if "scale-out" not in ctx.rig.hops:
        ctx.rig.hops["scale-out"] = Hop(ctx.rig.upstream.url).start()  # stopped by the rig's close
    hop = ctx.rig.hops["scale-out"]
    runs: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
    rig = _Rig(radosgw, redis, hop, image, workdir)
    try:
        t0 = time.monotonic()
        radosgw.start()
        redis.start()
        ctx.log(f"radosgw {radosgw.url} and redis {redis.url} up in {time.monotonic() - t0:.1f}s")
        for rep in range(plan.scale_out_reps):
            # Alternate the order from one repetition to the next, as the other scenarios do.
            for config in (CONFIGS if rep % 2 == 0 else tuple(reversed(CONFIGS))):
                runs[config].append(_one_rep(ctx, rig, config, rep))
    finally:
        try:
            _stop_all(rig.started)
            redis.stop()
        finally:
            radosgw.stop()
    _report(section, plan.blob_mib, blob, n, c, plan.scale_out_reps, runs)
    return section


def _count(value: float) -> str:
    """A median of counts: whole, or halfway between two (never rounded to look like a count)."""
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"


def _med(runs: list[dict[str, Any]], phase: str, attribute: str) -> float:
    return median(getattr(run[phase], attribute) for run in runs)


def _report(section: Section, blob_mib: int, blob: Blob, n: int, c: int, reps: int,
            runs: dict[str, list[dict[str, Any]]]) -> None:
    total = n * c

    def summary(config: str) -> dict[str, float]:
        rs = runs[config]
        out = {f"{phase}_{name}": _med(rs, phase, name)
               for phase in ("cold", "warm")
               for name in ("wall", "first_byte_ms", "upstream_gets", "upstream_requests", "s3_gets", "cpu")}
        out["cold_bytes"] = median(run["cold"].upstream_bytes / blob.size for run in rs)
        for phase in ("cold", "warm"):
            out[f"{phase}_mibs"] = median(_throughput(total, blob.size, run[phase].wall) for run in rs)
        return out

    stats = {config: summary(config) for config in CONFIGS}
    table = Table([
        "configuration", "nodes × clients", "cold: upstream GETs", "cold: upstream bytes (× blob)",
        "cold: wall (s)", "cold: MiB/s", "cold: first byte, median (ms)", "warm: S3 GETs",
        "warm: upstream requests", "warm: wall (s)", "warm: MiB/s", "server CPU, cold / warm (s)",
    ])
    for config in CONFIGS:
        s = stats[config]
        table.rows.append([
            LABELS[config], f"{n} × {c}", _count(s["cold_upstream_gets"]), f"{s['cold_bytes']:.2f}",
            f"{s['cold_wall']:.2f}", f"{s['cold_mibs']:,.0f}", f"{s['cold_first_byte_ms']:,.0f}",
            _count(s["warm_s3_gets"]), _count(s["warm_upstream_requests"]), f"{s['warm_wall']:.2f}",
            f"{s['warm_mibs']:,.0f}", f"{s['cold_cpu']:.1f} / {s['warm_cpu']:.1f}",
        ])
    section.tables.append(table)

    dist = stats["distribution"]
    for config in ("fleet", "fleet_tier"):
        s = stats[config]
        who = "no local tier" if config == "fleet" else "local tier"
        section.add(f"{config}_cold_upstream_gets", f"cold, {who}: upstream blob GETs", "requests", "lower",
                    s["cold_upstream_gets"], dist["cold_upstream_gets"])
        section.add(f"{config}_cold_wall", f"cold, {who}: wall time until all {total} have every byte", "s",
                    "lower", s["cold_wall"], dist["cold_wall"], floor=0.001,
                    samples={k: [run["cold"].wall for run in runs[k]] for k in (config, "distribution")})
        section.add(f"{config}_cold_throughput", f"cold, {who}: aggregate throughput", "MiB/s", "higher",
                    s["cold_mibs"], dist["cold_mibs"])
        section.add(f"{config}_warm_wall", f"warm, {who}: wall time", "s", "lower", s["warm_wall"],
                    dist["warm_wall"], floor=0.001,
                    samples={k: [run["warm"].wall for run in runs[k]] for k in (config, "distribution")})
        section.add(f"{config}_warm_throughput", f"warm, {who}: aggregate throughput", "MiB/s", "higher",
                    s["warm_mibs"], dist["warm_mibs"])

    problems = [f"{config} rep {run['rep'] + 1} {phase}: {problem}"
                for config in CONFIGS for run in runs[config] for phase in ("cold", "warm")
                for problem in run[phase].problems]
    verified = {config: sum(total - len(run[phase].problems) for run in runs[config] for phase in ("cold", "warm"))
                for config in CONFIGS}
    section.notes += [
        f"{n} nodes × {c} clients = {total} clients per round, all released at one instant (each its own "
        f"process, SHA-256 of the body); median of {reps} repetition(s), each on fresh nodes, a new bucket and "
        "an empty Redis. SHA-256 verified: " + ", ".join(
            f"{config} {verified[config]}/{2 * total * len(runs[config])}" for config in CONFIGS) + ".",
        "Cold: the blob is only upstream. Upstream GETs and bytes are counted by one hop between all the "
        "nodes and the upstream, after it has gone quiet. Warm: the same clients again once the blob is in "
        "the bucket; S3 GETs of the blob's object are counted from radosgw's access log.",
        "ocicache: `[fleet]` on one redis-server, `[storage] backend = \"s3\"` on one bucket (default part "
        f"size); the local tier is `local_max_size = {max(16, 4 * blob_mib)}MiB`, so in its warm round the "
        "nodes that hold the blob serve it from their disks, not from S3. distribution: `docker-registry` "
        "2.8 proxies on its S3 driver, each under its own `rootdirectory` of one bucket, `redirect.disable` "
        "(it serves the bytes itself, as ocicache does): nothing is shared between them, and none "
        "collapses concurrent misses, so each client of each node costs an upstream GET.",
        "Everything runs on one machine: the nodes, radosgw (memstore OSD), the hop and every client share "
        "its cores, so these are not the numbers of N machines; they show upstream traffic and how the "
        "same CPU is spent.",
    ]
    missing = [f"{config} rep {run['rep'] + 1}: {', '.join(run['missing_after_cold'])}"
               for config in CONFIGS for run in runs[config] if run["missing_after_cold"]]
    if missing:
        section.notes.append("Not in the bucket 120 s after the cold round (the warm round ran anyway): "
                             + "; ".join(missing))
    section.details["runs"] = {config: [{"rep": run["rep"], "cold": run["cold"].to_json(),
                                         "warm": run["warm"].to_json(),
                                         "missing_after_cold": run["missing_after_cold"]}
                                        for run in runs[config]] for config in CONFIGS}
    section.details["summary"] = stats
    if problems:
        section.error = f"{len(problems)} client(s) failed: " + "; ".join(problems[:5])


def evaluate_targets(sections: list[Section]) -> list[Target]:
    """
    Issue 14's property, from what the scale-out measured: one upstream GET
    per digest across the fleet, every client's bytes right.
    """
    section = next((s for s in sections if s.key == SCENARIO and not s.error and s.details.get("runs")), None)
    if section is None:
        return []
    targets = []
    runs = section.details["runs"]
    for config in ("fleet", "fleet_tier"):
        gets = [run["cold"]["upstream_gets"] for run in runs[config]]
        targets.append(Target(f"scale-out, {LABELS[config]}: 1 upstream GET for the cold blob",
                              all(g == 1 for g in gets), "upstream GETs per run: " + ", ".join(map(str, gets))))
    return targets
