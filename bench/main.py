"""
C{bench/run}: ocicache against CNCF distribution in proxy mode, and nginx
(sendfile) as the physical limit, on loopback; with C{--scale-out}, instead,
several nodes of each on one S3 store (L{bench.scale_out}).  Markdown tables on stdout,
progress on stderr, the same numbers as JSON in C{--json FILE} (and the
Markdown next to it, C{.md}); with C{--plot DIR}, PNG charts of the curves.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from ocitest.images import all_images

from . import clients, plot, scale_out
from . import git as bench_git
from .report import Section, render_markdown, to_json, write_json
from .rig import REPO_ROOT, Rig, ensure_installed, layered_image, parse_workers
from .scenarios import (
    CHOICES,
    SCENARIOS,
    THROUGHPUT_PARTS,
    WORKERS_PARTS,
    Context,
    Plan,
    evaluate_targets,
    plan_for,
)

DEFAULT_JSON = os.path.join(REPO_ROOT, "bench", "results", "latest.json")
SCALE_OUT_JSON = os.path.join(REPO_ROOT, "bench", "results", "scale-out.json")
GIT_JSON = os.path.join(REPO_ROOT, "bench", "results", "git.json")
FILES_JSON = os.path.join(REPO_ROOT, "bench", "results", "files.json")

DEFAULT_WORKERS = {"full": "1,auto", "quick": "1,auto", "tiny": "1"}
"""C{--workers} by mode: one worker against one per core, but on tiny sizes (the smoke test) one only."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark ocicache against distribution (registry:2) in proxy mode, on loopback.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="64 MiB blobs (256 MiB big blob), 2-3 s load runs, 16 slow clients: "
                           "under 4 minutes on 2 cores")
    size.add_argument("--tiny", action="store_true",
                      help="a few MiB, 1 s runs, clients 1 and 8, 50 idle connections, no big blob: "
                           "checks the harness end to end (the smoke test)")
    p.add_argument("--size-mib", type=int, default=None, metavar="N",
                   help="blob size for scenarios 1, 2, the largest of 4 and --scale-out "
                        "(default: 256, --quick 64, --tiny 4)")
    p.add_argument("--slow-clients", type=int, default=None, metavar="N",
                   help="slow clients in scenario 4 (default: 64, --quick 16, --tiny 4)")
    p.add_argument("--only", default=None, metavar="LIST",
                   help=f"comma-separated scenarios to run, of: {', '.join(CHOICES)} "
                        f"({', '.join(THROUGHPUT_PARTS)} are the parts of scenario 1)")
    p.add_argument("--workers", default=None, metavar="LIST",
                   help="ocicache's [server] workers settings, comma-separated counts or auto (default: "
                        f"{DEFAULT_WORKERS['full']}, --tiny {DEFAULT_WORKERS['tiny']}); the first runs every "
                        f"scenario, the others join {', '.join(WORKERS_PARTS)} and cold")
    p.add_argument("--scale-out", action="store_true",
                   help="instead of the scenarios: N nodes x C clients on one radosgw (and one Redis), "
                        "ocicache's fleet without and with a local tier, and distribution on its S3 "
                        "driver (needs ceph-mon ceph-osd radosgw ceph-common redis-server)")
    p.add_argument("--scale-out-nodes", type=int, default=None, metavar="N",
                   help="nodes per configuration of --scale-out (default: 3)")
    p.add_argument("--scale-out-clients", type=int, default=None, metavar="N",
                   help="clients per node of --scale-out (default: 16, --tiny 4)")
    p.add_argument("--files", action="store_true",
                   help="instead: /files/ against apt-cacher-ng, 16 clients, --size-mib of packages (200)")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help="write PNG charts of the curves into DIR (needs matplotlib: pip install 'ocicache[bench]')")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="where to write the results as JSON (default: bench/results/latest.json; "
                        "with --scale-out, bench/results/scale-out.json)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where the servers keep their files (default: a new temp dir, removed afterwards)")
    p.add_argument("--keep-workdir", action="store_true", help="leave the work dir (logs) behind")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="record ocicache with py-spy during every measured phase into DIR (needs py-spy)")
    p.add_argument("--no-install", action="store_true", help="never apt-get install missing programs")
    p.add_argument("--git", action="store_true",
                   help="instead: git clones direct vs through ocicache, cold and warm, and an incremental"
                        " fetch in mirror mode (needs git lighttpd; docs/git.md)")
    p.add_argument("--git-mib", type=int, default=None, metavar="N",
                   help="MiB of history in the --git repository (default: 100, --quick 32, --tiny 8)")
    args = p.parse_args(argv)
    args.mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    if args.scale_out and args.only is not None:
        p.error("--scale-out runs on its own; it does not take --only")
    if args.workers is not None and (args.scale_out or args.git or args.files):
        p.error("--workers goes with the five scenarios, not --scale-out, --git or --files")
    try:
        args.workers = parse_workers(args.workers or DEFAULT_WORKERS[args.mode])
    except ValueError as e:
        p.error(f"--workers: {e}")
    args.scenarios = [s.strip() for s in (args.only or ",".join(CHOICES)).split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in CHOICES]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(CHOICES)}")
    if args.size_mib is not None and args.size_mib < 1:
        p.error("--size-mib must be at least 1")
    if args.slow_clients is not None and args.slow_clients < 1:
        p.error("--slow-clients must be at least 1")
    for option in ("scale_out_nodes", "scale_out_clients"):
        if getattr(args, option) is not None:
            if not args.scale_out:
                p.error(f"--{option.replace('_', '-')} goes with --scale-out")
            if getattr(args, option) < 1:
                p.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.scale_out:
        args.scenarios = [scale_out.SCENARIO]
    if args.json is None:
        args.json = (SCALE_OUT_JSON if args.scale_out else GIT_JSON if args.git
                     else FILES_JSON if args.files else DEFAULT_JSON)
    return args


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _ocicache_version() -> str:
    try:
        with open(os.path.join(REPO_ROOT, "src", "ocicache", "_version.py")) as f:
            match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
        return match.group(1) if match else "?"
    except OSError:
        return "?"


def metadata(plan: Plan, args: argparse.Namespace, started: datetime, loadavg_start: str) -> dict[str, Any]:
    commit = _run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]) or "?"
    dirty = _run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"])
    dist = _run(["docker-registry", "--version"])
    match = re.search(r"(\d+\.\d+\.\d+\S*)", dist)
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "date_iso": started.isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ocicache_version": _ocicache_version(),
        "git": commit + ("+dirty" if dirty else ""),
        "distribution_version": match.group(1) if match else dist,
        "wrk_version": (_run(["wrk", "--version"]).splitlines() or ["?"])[0][:60],
        "containerd_version": _run(["containerd", "--version"]),
        "mode": plan.mode,
        "quick": plan.mode == "quick",
        "tiny": plan.mode == "tiny",
        "blob_mib": plan.blob_mib,
        "plan": {k: (list(v) if isinstance(v, tuple) else v) for k, v in plan.__dict__.items()},
        "scenarios": args.scenarios,
        "workers": list(args.workers),
        "loadavg_start": loadavg_start,
    }


def raise_fd_limit(want: int = 8192) -> int:
    """
    Raise this process's soft limit on open files (inherited by every
    server and client it starts) to C{want}, or the hard limit if lower:
    256 clients plus 1,000 idle connections need more than the usual 1024.
    Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def _sections_to_run(names: list[str]) -> list[tuple[str, frozenset[str]]]:
    """
    The scenarios in the order asked, the parts of scenario 1 gathered
    into one run at the place of the first of them.
    """
    parts = frozenset(n for n in names if n in THROUGHPUT_PARTS)
    runs: list[tuple[str, frozenset[str]]] = []
    for name in names:
        if name in THROUGHPUT_PARTS:
            if not any(run == "throughput" for run, _ in runs):
                runs.append(("throughput", parts))
        elif all(run != name for run, _ in runs):
            runs.append((name, frozenset()))
    return runs


class _Interrupted(BaseException):
    pass


def _on_signal(signum: int, frame: Any) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.files:
        from .files import run_files

        return run_files(args.size_mib or 200, lambda message: print(f"[bench] {message}", file=sys.stderr),
                         args.json, args.keep_workdir)
    plan = plan_for(args.mode, args.size_mib, args.slow_clients, args.scale_out_nodes, args.scale_out_clients)
    t_start = time.monotonic()
    started = datetime.now(UTC)
    loadavg_start = _loadavg()

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - t_start:6.1f}s] {message}", file=sys.stderr, flush=True)

    if args.git:
        return bench_git.main(args, log)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    own_workdir = args.workdir is None
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="ocicache-bench-"))
    rig = Rig(workdir, log)
    sections: list[Section] = []
    interrupted: str | None = None
    failed_setup: str | None = None
    try:
        if not args.no_install:
            ensure_installed(log, scale_out.REQUIRED if args.scale_out else None)
        if args.profile and not clients.Profiler.available():
            log("--profile: py-spy is not installed (pip install py-spy); profiles will be empty")
        nofile = raise_fd_limit()
        if args.scale_out:
            log(f"mode {plan.mode}, scale-out: blob {plan.blob_mib} MiB, {plan.scale_out_nodes} nodes × "
                f"{plan.scale_out_clients} clients, {plan.scale_out_reps} repetition(s), open files {nofile}, "
                f"work dir {workdir}")
        else:
            log(f"mode {plan.mode}: blob {plan.blob_mib} MiB, memory sizes {plan.memory_sizes}, "
                f"big blob {plan.big_mib or 'none'}, clients {plan.scale_clients}, ocicache workers "
                f"{', '.join(args.workers)}, open files {nofile}, work dir {workdir}")
        runs = _sections_to_run(args.scenarios)
        sizes = {plan.blob_mib}
        if any(name == "memory" for name, _ in runs):
            sizes.update(plan.memory_sizes)
        if plan.big_mib and any("bigblob" in parts for _, parts in runs):
            sizes.add(plan.big_mib)
        images = dict(all_images(big_sizes=tuple(sorted(sizes))))
        if not args.scale_out:
            images["layered"] = layered_image("library/ocibench-layers", "v1", plan.ctr_layers)
        rig.start(images)
        ctx = Context(rig, plan, log, workdir,
                      profile_dir=os.path.abspath(args.profile) if args.profile else None,
                      workers=args.workers)
        for name, parts in runs:
            title, run = {**SCENARIOS, scale_out.SCENARIO: ("Scale-out", scale_out.scale_out)}[name]
            log(f"--- {title}" + (f" ({', '.join(p for p in THROUGHPUT_PARTS if p in parts)})" if parts else ""))
            ctx.parts = parts
            t0 = time.monotonic()
            try:
                section = run(ctx)
            except Exception as e:
                log(f"{title} failed:\n{traceback.format_exc()}")
                section = Section(name, title, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            section.seconds = time.monotonic() - t0
            if ctx.profiles:
                paths = [p["raw"] for p in ctx.profiles.values() if "raw" in p]
                summary = clients.profile_summary(paths)
                errors = sorted({p["error"] for p in ctx.profiles.values() if "error" in p})
                section.details["profile"] = {"files": paths, "errors": errors, **summary}
                if summary["samples"]:
                    section.notes.append(
                        f"py-spy on ocicache ({summary['samples']} samples of busy threads): own time "
                        + ", ".join(f"`{frame}` {pct:.0f}%" for frame, pct in summary["own"][:8])
                    )
                    log(f"{title}: py-spy top (own): " + "; ".join(f"{f} {p:.1f}%" for f, p in summary["own"][:12]))
                    log(f"{title}: py-spy top (total): " + "; ".join(f"{f} {p:.1f}%" for f, p in summary["total"][:12]))
                ctx.profiles.clear()
            sections.append(section)
            log(f"{title}: {section.seconds:.1f}s" + (f" (FAILED: {section.error})" if section.error else ""))
    except _Interrupted as e:
        interrupted = str(e)
    except Exception as e:
        failed_setup = f"{type(e).__name__}: {e}"
        log(f"set-up failed:\n{traceback.format_exc()}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            clients.kill_all()
        finally:
            try:
                rig.close()
            except BaseException as e:  # still remove what we can
                log(f"cleanup: {type(e).__name__}: {e}")
            keep = args.keep_workdir or failed_setup is not None
            if own_workdir and not keep:
                shutil.rmtree(workdir, ignore_errors=True)
            elif keep:
                log(f"work dir kept: {workdir}")
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted:
        log(f"interrupted ({interrupted}); everything started was stopped")
        return 130
    meta = metadata(plan, args, started, loadavg_start)
    meta["loadavg_end"] = _loadavg()
    meta["seconds"] = round(time.monotonic() - t_start, 1)
    if failed_setup:
        meta["setup_error"] = failed_setup
    targets = evaluate_targets(sections, plan, args.workers) + scale_out.evaluate_targets(sections)
    markdown = render_markdown(meta, sections, targets)
    markdown += f"\nTotal wall time {meta['seconds']:.0f} s; load average at the end {meta['loadavg_end']}.\n"
    print(markdown, flush=True)
    data = to_json(meta, sections, targets)
    write_json(args.json, data)
    md_path = os.path.splitext(args.json)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(markdown)
    log(f"wrote {args.json} and {md_path}")
    if args.plot:
        try:
            written = plot.write_charts(data, os.path.abspath(args.plot))
        except plot.Unavailable as e:
            log(f"--plot: {e}")
        except Exception as e:  # a chart must not lose the run's results
            log(f"--plot failed: {type(e).__name__}: {e}")
        else:
            log(f"--plot: wrote {len(written)} chart(s) to {os.path.abspath(args.plot)}: "
                + ", ".join(os.path.basename(w) for w in written))
    failed = failed_setup is not None or any(s.error for s in sections) or len(sections) < len(
        _sections_to_run(args.scenarios))
    return 1 if failed else 0
