"""
C{bench/run} end to end on tiny sizes: it must start and stop everything,
print a Markdown table per scenario and write a JSON file in which every
comparison has C{ocicache}, C{distribution} and a finite C{ratio}.

No timing is asserted: on tiny blobs the numbers mean nothing, and this is
about the harness, not the daemon.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from ocitest import REPO_ROOT

pytestmark = pytest.mark.integration

SCENARIOS = {
    "warm_throughput": "### 1. Warm blob throughput",
    "cold_blob": "### 2. Cold blob",
    "warm_manifests": "### 3. Warm manifests",
    "memory": "### 4. Memory",
    "containerd": "### 5. containerd",
}

TABLE_HEADER = "| measurement | ocicache | distribution | ratio (> 1: ocicache better) |"

# --tiny takes well under 90 s; this only stops a hung run from hanging
# the suite.
HANG_GUARD = 300


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_bench_run_tiny(tmp_path: os.PathLike[str]) -> None:
    result_json = os.path.join(str(tmp_path), "results", "bench.json")
    workdir = os.path.join(str(tmp_path), "work")
    command = [
        sys.executable, os.path.join(REPO_ROOT, "bench", "run"),
        "--tiny", "--no-install", "--json", result_json, "--workdir", workdir,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD, cwd=REPO_ROOT)
    assert proc.returncode == 0, (
        f"bench/run exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n"
        f"--- stderr ---\n{proc.stderr[-6000:]}"
    )

    # The Markdown tables, one per scenario, on stdout.
    out = proc.stdout
    for heading in SCENARIOS.values():
        assert heading in out, f"no {heading!r} section on stdout:\n{out}"
    assert out.count(TABLE_HEADER) == len(SCENARIOS), out
    assert "### Targets" in out
    assert os.path.exists(os.path.splitext(result_json)[0] + ".md")

    with open(result_json) as f:
        data = json.load(f)

    meta = data["meta"]
    assert meta["tiny"] is True and meta["quick"] is False
    assert meta["cores"] == os.cpu_count()
    assert meta["date"] and meta["blob_mib"] > 0

    assert set(data["scenarios"]) == set(SCENARIOS)
    for key, scenario in data["scenarios"].items():
        assert scenario["error"] is None, f"{key}: {scenario['error']}"
        comparisons = scenario["comparisons"]
        assert comparisons, f"{key} has no comparisons"
        for name, comparison in comparisons.items():
            where = f"{key}.{name}: {comparison}"
            assert {"ocicache", "distribution", "ratio"} <= set(comparison), where
            for field in ("ocicache", "distribution", "ratio"):
                assert _is_number(comparison[field]), where
                assert math.isfinite(comparison[field]), where
            assert comparison["ratio"] >= 0, where

    # Every target is evaluated from the measurements (met or not).
    assert data["targets"], "no targets evaluated"
    for target in data["targets"]:
        assert target["met"] in (True, False), target

    # Nothing the run started is left behind.
    leftovers = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes still running from {workdir}: {leftovers}"


def test_bench_run_tiny_workers(tmp_path: os.PathLike[str]) -> None:
    """
    C{bench/run --workers 1,2} on tiny sizes, the parts the workers
    dimension covers: both settings measured in every row of them (a
    column each), the CPU of the two workers counted, the cold 16 clients
    fetched with one upstream GET in every run of the two workers, and
    every process stopped, the workers too.
    """
    result_json = os.path.join(str(tmp_path), "results", "bench.json")
    workdir = os.path.join(str(tmp_path), "work")
    command = [
        sys.executable, os.path.join(REPO_ROOT, "bench", "run"), "--tiny", "--no-install", "--workers", "1,2",
        "--only", "throughput,scale,tls,cold", "--json", result_json, "--workdir", workdir,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD, cwd=REPO_ROOT)
    assert proc.returncode == 0, (
        f"bench/run exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n"
        f"--- stderr ---\n{proc.stderr[-6000:]}"
    )
    assert "| measurement | ocicache, 1 worker | ocicache, workers = 2 | distribution |" in proc.stdout, proc.stdout
    with open(result_json) as f:
        data = json.load(f)
    assert data["meta"]["workers"] == ["1", "2"]
    warm = data["scenarios"]["warm_throughput"]["comparisons"]
    cold = data["scenarios"]["cold_blob"]["comparisons"]
    for comparison in [*(warm[k] for k in ("one_connection", "8_connections", "cpu_per_gib_8", "scale_1_mib_s",
                                           "scale_8_mib_s", "scale_8_cpu_per_gib", "tls_8_connections",
                                           "tls_cpu_per_gib")),
                       *(cold[k] for k in ("wall_1", "wall_16", "upstream_gets_16", "server_cpu_16"))]:
        assert set(comparison["workers"]) == {"1", "2"}, comparison
        assert comparison["workers"]["1"]["ocicache"] == comparison["ocicache"], comparison
    # Measured, not left at zero: throughput, time, and the CPU of TLS (tens of MiB through pyOpenSSL).
    for comparison in (warm["8_connections"], warm["scale_8_mib_s"], warm["tls_8_connections"],
                       warm["tls_cpu_per_gib"], cold["wall_16"]):
        assert comparison["workers"]["2"]["ocicache"] > 0, comparison
    # Every client's answer found in the access log, by the worker that gave it.
    runs = [r for r in data["scenarios"]["cold_blob"]["details"]["runs"] if r["workers"] == "2"]
    assert sorted(r["clients"] for r in runs) == [1, 16], runs
    for run in runs:
        assert run["worker_processes"] == 2 and run["upstream_gets"] >= 1, run
        assert len(run["clients_per_worker"]) == 2 and sum(run["clients_per_worker"]) == run["clients"], run
    # Judged from every run's GETs: missed with more than one, n/a with one if the kernel gave all
    # 16 clients to one worker.
    (target,) = [t for t in data["targets"] if "spread over the workers [workers = 2]" in t["name"]]
    (sixteen,) = [r for r in runs if r["clients"] == 16]
    spread = 0 not in sixteen["clients_per_worker"]
    assert target["met"] is (False if sixteen["upstream_gets"] != 1 else (True if spread else None)), target
    leftovers = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes still running from {workdir}: {leftovers}"


SCALE_OUT_NODES = 2
SCALE_OUT_CLIENTS = 4


@pytest.mark.fleet
def test_bench_scale_out_tiny(tmp_path: os.PathLike[str]) -> None:
    """
    C{bench/run --scale-out} end to end on a 4 MiB blob, 2 nodes × 4
    clients, one repetition: radosgw, Redis, both ocicache configurations
    and distribution on its S3 driver started and stopped; every client's
    bytes right; the fleet's one upstream GET, distribution's one per
    node at least (the numbers the README's table reports).
    """
    result_json = os.path.join(str(tmp_path), "results", "scale.json")
    workdir = os.path.join(str(tmp_path), "work")
    command = [
        sys.executable, os.path.join(REPO_ROOT, "bench", "run"), "--scale-out", "--tiny", "--no-install",
        "--scale-out-nodes", str(SCALE_OUT_NODES), "--scale-out-clients", str(SCALE_OUT_CLIENTS),
        "--json", result_json, "--workdir", workdir,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD, cwd=REPO_ROOT)
    assert proc.returncode == 0, (
        f"bench/run --scale-out exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n"
        f"--- stderr ---\n{proc.stderr[-6000:]}"
    )
    out = proc.stdout
    assert "### Scale-out: 2 nodes × 4 clients" in out, out
    for label in ("ocicache fleet, S3, no local tier", "ocicache fleet, S3 + local tier",
                  "distribution 2.8, S3 driver"):
        assert f"| {label} | 2 × 4 |" in out, out
    # Only the scale-out: the default scenarios do not run with it.
    assert "### 1. Warm blob throughput" not in out

    with open(result_json) as f:
        data = json.load(f)
    assert set(data["scenarios"]) == {"scale_out"}
    scenario = data["scenarios"]["scale_out"]
    assert scenario["error"] is None, scenario["error"]
    for name, comparison in scenario["comparisons"].items():
        for field in ("ocicache", "distribution", "ratio"):
            assert _is_number(comparison[field]) and math.isfinite(comparison[field]), f"{name}: {comparison}"
    runs = scenario["details"]["runs"]
    for config in ("fleet", "fleet_tier"):
        (run,) = runs[config]
        # One GET for the fleet, with or without a local tier: a node that
        # waited out the filler's lock finds the blob in the bucket.
        assert run["cold"]["upstream_gets"] == 1, run
        assert run["cold"]["problems"] == [] and run["warm"]["problems"] == [], run
        # The warm round: the blob is in the bucket; nothing asked of the upstream for it.
        assert run["missing_after_cold"] == [] and run["warm"]["upstream_gets"] == 0, run
    (run,) = runs["fleet"]
    assert run["warm"]["s3_gets"] >= 1, run  # no local tier: the bucket served it
    (run,) = runs["distribution"]
    # Nothing shared between distribution's nodes: each fetched the blob itself.
    assert run["cold"]["upstream_gets"] >= SCALE_OUT_NODES, run
    assert run["cold"]["problems"] == [] and run["warm"]["problems"] == [], run
    assert [t["met"] in (True, False) for t in data["targets"]] == [True, True], data["targets"]

    leftovers = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes still running from {workdir}: {leftovers}"


def test_bench_git_tiny(tmp_path: os.PathLike[str]) -> None:
    """
    C{bench/run --git} end to end on 8 MiB of history and 4 clients: the
    git server, the hop and three daemons started and stopped, its table
    printed, and the counts docs/git.md reports: one upstream pack
    request for the cold burst, none warm, one mirror fetch for the
    incremental fetch, which brings the new commit.
    """
    result_json = os.path.join(str(tmp_path), "results", "git.json")
    command = [sys.executable, os.path.join(REPO_ROOT, "bench", "run"), "--git", "--tiny", "--no-install",
               "--json", result_json, "--workdir", os.path.join(str(tmp_path), "work")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD, cwd=REPO_ROOT)
    assert proc.returncode == 0, f"bench/run --git exited {proc.returncode}\n{proc.stderr[-6000:]}"
    assert "| git clone (end to end): upstream pack requests | 4 | 1 | 0 | |" in proc.stdout, proc.stdout
    with open(result_json) as f:
        data = json.load(f)
    for kind in ("replay", "clone"):
        assert data[f"{kind}_cold"]["upstream_packs"] == 1 and data[f"{kind}_warm"]["upstream_packs"] == 0
    assert data["incremental_mirror"]["upstream_packs"] == 1 and data["incremental_mirror"]["fresh"]


def test_bench_files_tiny(tmp_path: os.PathLike[str]) -> None:
    """
    C{bench/run --files} end to end on 20 MiB of packages: nginx, ocicache
    and apt-cacher-ng started and stopped, every client's bytes right,
    ocicache's one upstream request per package in the cold round and none
    in the warm one.
    """
    result_json = os.path.join(str(tmp_path), "results", "files.json")
    command = [sys.executable, os.path.join(REPO_ROOT, "bench", "run"), "--files", "--size-mib", "20",
               "--json", result_json]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD, cwd=REPO_ROOT)
    assert proc.returncode == 0, f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    assert "| | ocicache | apt-cacher-ng |" in proc.stdout
    with open(result_json) as f:
        rounds = {(r["mirror"], r["round"]): r for r in json.load(f)}
    assert set(rounds) == {(m, r) for m in ("ocicache", "apt-cacher-ng") for r in ("cold", "warm")}
    assert all(r["errors"] == 0 and r["delivered_bytes"] > 16 * (20 << 20) for r in rounds.values())
    assert rounds[("ocicache", "cold")]["upstream_requests"] == 2
    assert rounds[("ocicache", "warm")]["upstream_requests"] == 0
