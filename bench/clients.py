"""
Load generators and probes, each client in its own process:

  - L{curl_get}, L{curl_parallel}: C{curl -o /dev/null} (warm throughput)
  - L{fetch_many}, L{fetch_each}: N L{bench.fetch_client} processes started
    on one signal, each hashing its body (cold blobs: first-byte times, SHA-256)
  - L{slow_readers}: one L{bench.slow_client} process pacing many sockets
  - L{run_wrk}: C{wrk} with a Lua script (method, Accept, a JSON summary)
  - L{blob_load}: L{bench.blob_load} processes, time-bounded keep-alive
    blob GETs at any concurrency (the scale curves)
  - L{IdleConnections}: L{bench.idle_conns} holding many idle keep-alive
    connections open
  - L{Profiler}: C{py-spy record} attached to a server and its worker
    processes (optional)

A server's CPU time and memory are measured by L{bench.server_procs}.

Every process started here is tracked, and L{kill_all} ends the ones still
running (the harness calls it on any exit, Ctrl-C included).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CurlResult",
    "IdleConnections",
    "Profiler",
    "blob_load",
    "curl_get",
    "curl_parallel",
    "fetch_each",
    "fetch_many",
    "kill_all",
    "profile_summary",
    "run_head_load",
    "run_wrk",
    "wrk_handles_head",
    "slow_readers",
]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20

_live: set[subprocess.Popen[Any]] = set()
_live_lock = threading.Lock()


def _spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    proc: subprocess.Popen[Any] = subprocess.Popen(list(cmd), **kwargs)
    with _live_lock:
        _live.add(proc)
    return proc


def _reaped(proc: subprocess.Popen[Any]) -> None:
    with _live_lock:
        _live.discard(proc)


def kill_all() -> None:
    """
    Kill every client process still running (by its own pid).
    """
    with _live_lock:
        procs = list(_live)
        _live.clear()
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _finish(proc: subprocess.Popen[Any], timeout: float) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err = (err or "") + f"\n(killed after {timeout:.0f}s)"
    finally:
        _reaped(proc)
    return out or "", err or ""


# --- curl ---------------------------------------------------------------


@dataclass
class CurlResult:
    status: int
    bytes: int
    ttfb: float
    total: float
    error: str = ""


_CURL_FORMAT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"


def _curl_cmd(url: str, timeout: float, cacert: str | None = None) -> list[str]:
    tls = ["--cacert", cacert] if cacert else []
    return ["curl", "-s", "-o", "/dev/null", "--max-time", str(int(timeout)), *tls,
            "-H", "Accept: */*", "-w", _CURL_FORMAT, url]


def _parse_curl(out: str, err: str, rc: int | None) -> CurlResult:
    try:
        code, size, ttfb, total = out.split()
        return CurlResult(int(code), int(size), float(ttfb), float(total),
                          "" if rc == 0 else f"curl exit {rc} {err.strip()}")
    except ValueError:
        return CurlResult(0, 0, 0.0, 0.0, f"curl exit {rc}: {out!r} {err.strip()!r}")


def curl_get(url: str, timeout: float = 300.0, cacert: str | None = None) -> CurlResult:
    """
    One C{curl -o /dev/null}; C{cacert}: the only CA it trusts for HTTPS.
    """
    proc = _spawn(_curl_cmd(url, timeout, cacert), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _finish(proc, timeout + 10)
    return _parse_curl(out, err, proc.returncode)


def curl_parallel(url: str, n: int, timeout: float = 300.0,
                  cacert: str | None = None) -> tuple[float, list[CurlResult]]:
    """
    C{n} curl processes at once; returns the wall time from the first
    start to the last exit, and each result.
    """
    started = time.monotonic()
    procs = [
        _spawn(_curl_cmd(url, timeout, cacert), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    results = []
    for proc in procs:
        out, err = _finish(proc, timeout + 10)
        results.append(_parse_curl(out, err, proc.returncode))
    return time.monotonic() - started, results


# --- processes started on one signal --------------------------------------


def _start_ready(cmds: list[list[str]], timeout: float) -> list[subprocess.Popen[Any]]:
    procs = [
        _spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in cmds
    ]
    deadline = time.monotonic() + timeout
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"client {proc.args!r} did not start: {line!r}")
        if time.monotonic() > deadline:
            raise TimeoutError("clients took too long to start")
    return procs


def _go(procs: list[subprocess.Popen[Any]]) -> float:
    started = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return started


def fetch_many(url: str, n: int, timeout: float = 300.0) -> tuple[float, list[dict[str, Any]]]:
    """
    C{n} L{bench.fetch_client} processes, released at once; returns the
    release time (C{time.monotonic()}) and each client's report (times
    are absolute monotonic values).
    """
    return fetch_each([url] * n, timeout)


def fetch_each(urls: Sequence[str], timeout: float = 300.0) -> tuple[float, list[dict[str, Any]]]:
    """
    L{fetch_many} with one client per URL (several servers at once): the
    reports are in the order of C{urls}.
    """
    script = os.path.join(BENCH_DIR, "fetch_client.py")
    procs = _start_ready([[sys.executable, script, url, str(timeout)] for url in urls], 60)
    started = _go(procs)
    reports = []
    for proc in procs:
        out, err = _finish(proc, timeout + 30)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if lines:
            reports.append(json.loads(lines[-1]))
        else:
            reports.append({"error": f"no report (exit {proc.returncode}): {err.strip()[-500:]}",
                            "bytes": 0, "status": None, "sha256": None, "t_first": None, "t_end": None})
    return started, reports


def slow_readers(url: str, clients: int, rate: float, timeout: float,
                 hash_every: int = 8, seconds: float = 0.0) -> tuple[float, dict[str, Any]]:
    """
    C{clients} paced readers of C{url} in one process (stopping after
    C{seconds} if not 0); returns the release time and the process's
    report.
    """
    script = os.path.join(BENCH_DIR, "slow_client.py")
    cmd = [sys.executable, script, url, "--clients", str(clients), "--rate", str(rate),
           "--hash-every", str(hash_every), "--timeout", str(timeout), "--seconds", str(seconds)]
    procs = _start_ready([cmd], 60)
    started = _go(procs)
    out, err = _finish(procs[0], timeout + 30)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"slow_client gave no report (exit {procs[0].returncode}): {err[-2000:]}")
    return started, json.loads(lines[-1])


def blob_load(url: str, connections: int, seconds: float, processes: int = 2) -> dict[str, Any]:
    """
    C{connections} keep-alive connections downloading C{url} over and
    over for C{seconds}, in up to C{processes} L{bench.blob_load}
    processes released at once; returns the body bytes, MiB/s, complete
    responses and errors of all of them.
    """
    script = os.path.join(BENCH_DIR, "blob_load.py")
    processes = max(1, min(processes, connections))
    per = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    cmds = [[sys.executable, script, url, "--connections", str(n), "--seconds", str(seconds)] for n in per]
    procs = _start_ready(cmds, 60)
    _go(procs)
    total: dict[str, Any] = {"bytes": 0, "responses": 0, "errors": 0, "bad": 0, "seconds": 0.0,
                             "statuses": Counter(), "first_headers_max_s": 0.0, "never_answered": 0}
    for proc in procs:
        out, err = _finish(proc, seconds + 60)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"blob_load gave no report (exit {proc.returncode}): {err[-2000:]}")
        report = json.loads(lines[-1])
        for key in ("bytes", "responses", "errors", "bad"):
            total[key] += report[key]
        total["seconds"] = max(total["seconds"], report["seconds"])
        total["never_answered"] += report["never_answered"]
        total["first_headers_max_s"] = max(total["first_headers_max_s"], report["first_headers_max_s"] or 0.0)
        total["statuses"].update(report["statuses"])
    total["statuses"] = dict(total["statuses"])
    total["mib_s"] = total["bytes"] / MiB / total["seconds"] if total["seconds"] else 0.0
    return total


class IdleConnections:
    """
    C{connections} idle keep-alive connections to C{url} (one small GET
    each, then silence), held by one L{bench.idle_conns} process for the
    duration of the C{with} block (at most C{max_seconds}).
    """

    def __init__(self, url: str, connections: int, max_seconds: float = 300.0) -> None:
        self.url = url
        self.connections = connections
        self.max_seconds = max_seconds
        self.opened = 0
        self.report: dict[str, Any] = {}
        self._proc: subprocess.Popen[Any] | None = None

    def __enter__(self) -> IdleConnections:
        script = os.path.join(BENCH_DIR, "idle_conns.py")
        self._proc = _spawn([sys.executable, script, self.url, "--connections", str(self.connections),
                             "--max-seconds", str(self.max_seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            _, err = _finish(self._proc, 10)
            raise RuntimeError(f"idle_conns did not start: {line!r} {err[-2000:]}")
        self.opened = int(line[1])
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        try:
            out, err = proc.communicate("stop\n", timeout=60)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            proc.kill()
            out, err = proc.communicate()
        finally:
            _reaped(proc)
        lines = [line for line in (out or "").splitlines() if line.startswith("{")]
        self.report = json.loads(lines[-1]) if lines else {"error": (err or "")[-2000:]}


# --- wrk ------------------------------------------------------------------

_WRK_LUA = """\
wrk.method = "{method}"
wrk.headers["Accept"] = "{accept}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d," ..
    "\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"mean_us\\":%.1f,\\"max_us\\":%d," ..
    "\\"err_connect\\":%d,\\"err_read\\":%d,\\"err_write\\":%d,\\"err_status\\":%d,\\"err_timeout\\":%d}}\\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(url: str, method: str, accept: str, seconds: float, connections: int, threads: int,
            script_dir: str, timeout: str = "10s") -> dict[str, Any]:
    """
    One C{wrk -t<threads> -c<connections> -d<seconds>s --latency} run;
    returns requests/s, p50/p99 latency (ms), errors and wrk's own text.
    """
    os.makedirs(script_dir, exist_ok=True)
    script = os.path.join(script_dir, f"wrk-{method.lower()}.lua")
    with open(script, "w") as f:
        f.write(_WRK_LUA.format(method=method, accept=accept))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "--timeout", timeout, "-s", script, url]
    proc = _spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _finish(proc, seconds + 60)
    summary = None
    for line in out.splitlines():
        if line.startswith("BENCHJSON "):
            summary = json.loads(line[len("BENCHJSON "):])
    if summary is None or proc.returncode != 0:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    duration = summary["duration_us"] / 1e6
    errors = sum(summary[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    return {
        "requests": summary["requests"],
        "seconds": duration,
        "rps": summary["requests"] / duration if duration else 0.0,
        "p50_ms": summary["p50_us"] / 1000,
        "p90_ms": summary["p90_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "mean_ms": summary["mean_us"] / 1000,
        "max_ms": summary["max_us"] / 1000,
        "errors": errors,
        "error_detail": {k: summary[k] for k in summary if k.startswith("err_")},
        "text": "\n".join(line for line in out.splitlines() if not line.startswith("BENCHJSON ")),
    }


def wrk_handles_head(url: str, accept: str, script_dir: str) -> bool:
    """
    Whether this wrk completes C{HEAD} requests (wrk 4.1 does not: its
    parser waits for a body after a HEAD response, wg/wrk#198).  A one
    second probe on one connection.
    """
    try:
        result = run_wrk(url, "HEAD", accept, 1, 1, 1, script_dir, timeout="1s")
    except RuntimeError:
        return False
    return bool(result["requests"] > 0 and result["errors"] == 0)


def run_head_load(url: str, method: str, accept: str, seconds: float, connections: int,
                  processes: int = 2) -> dict[str, Any]:
    """
    L{bench.head_load} in C{processes} processes sharing C{connections}
    keep-alive connections, released at once; the same summary as
    L{run_wrk}.
    """
    script = os.path.join(BENCH_DIR, "head_load.py")
    per = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    cmds = [[sys.executable, script, url, "--connections", str(n), "--seconds", str(seconds),
             "--method", method, "--accept", accept] for n in per if n > 0]
    procs = _start_ready(cmds, 60)
    _go(procs)
    latencies: list[int] = []
    requests = errors = bad = 0
    elapsed = 0.0
    for proc in procs:
        out, err = _finish(proc, seconds + 60)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"head_load gave no report (exit {proc.returncode}): {err[-2000:]}")
        report = json.loads(lines[-1])
        latencies.extend(report["latencies_us"])
        requests += report["requests"]
        errors += report["errors"]
        bad += report["bad_status"]
        elapsed = max(elapsed, report["seconds"])
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] / 1000

    return {
        "requests": requests,
        "seconds": elapsed,
        "rps": requests / elapsed if elapsed else 0.0,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": (sum(latencies) / len(latencies) / 1000) if latencies else 0.0,
        "max_ms": (latencies[-1] / 1000) if latencies else 0.0,
        "errors": errors + bad,
        "error_detail": {"socket": errors, "status": bad},
        "text": "",
    }


# --- profiling ------------------------------------------------------------------


class Profiler:
    """
    C{py-spy record --format raw} attached to C{pid} and its child
    processes (the daemon's workers) while the context is open (nothing at
    all if py-spy is not installed); L{profile_summary} reads the
    collapsed stacks it wrote.
    """

    def __init__(self, pid: int, path: str, rate: int = 199) -> None:
        self.pid = pid
        self.path = path
        self.rate = rate
        self.proc: subprocess.Popen[Any] | None = None
        self.error = ""

    @staticmethod
    def available() -> bool:
        return shutil.which("py-spy") is not None

    def __enter__(self) -> Profiler:
        if not self.available():
            self.error = "py-spy is not installed (pip install py-spy)"
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.proc = _spawn(
            ["py-spy", "record", "--pid", str(self.pid), "--rate", str(self.rate), "--format", "raw",
             "--threads", "--subprocesses", "--nonblocking", "-o", self.path],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(0.3)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = _finish(self.proc, 30)
        if not os.path.exists(self.path):
            self.error = err.strip()[-500:]



def profile_summary(paths: Sequence[str], n: int = 15) -> dict[str, Any]:
    """
    The top C{n} functions in py-spy's collapsed stacks (C{--format raw})
    from C{paths}, by own time, and ocicache's functions by total
    (inclusive) time, as C{(frame, percent of samples)}.  py-spy samples only busy threads
    unless told C{--idle}, so the percentages are of busy time.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    stack, _, count_text = line.rstrip("\n").rpartition(" ")
                    if not count_text.isdigit():
                        continue
                    count = int(count_text)
                    if stack.startswith("process "):
                        # --subprocesses: the process first, `process PID:"command line"`, whose
                        # command line (python -c "...; run()") may hold the separator itself.
                        stack = stack.partition('";')[2]
                    frames = [frame for frame in stack.split(";") if not frame.startswith("thread (")]
                    if not frames:
                        continue
                    samples += count
                    own[frames[-1]] += count
                    # Inclusive time of ocicache's own functions: where the
                    # time goes in its code (the reactor's frames above them
                    # are in every sample and say nothing).
                    for frame in set(frames):
                        if "ocicache/" in frame:
                            total[frame] += count
        except OSError:
            continue
    return {
        "samples": samples,
        "own": [(frame, round(100.0 * c / samples, 1)) for frame, c in own.most_common(n)] if samples else [],
        "total": [(frame, round(100.0 * c / samples, 1)) for frame, c in total.most_common(n)] if samples else [],
    }
