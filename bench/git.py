"""
C{bench/run --git}: git clones through ocicache against clones straight
from the upstream (issue 20).

    git http-backend behind lighttpd (ocitest.gitserver)
      ├─ direct: N concurrent clients
      └─ hop (counts upstream requests and bytes)
           └─ ocicache ([[git]], mode "cache"; then "mirror")
                └─ N concurrent clients

The repository is made by a script: commits of incompressible files
(C{--git-mib}, default 100 MiB of history).  Two kinds of clients:

  - C{git clone}: end to end, including the client's own index-pack,
    which on 2 cores costs about as much as the transfer;
  - the same v2 fetch request replayed with curl, its response read and
    dropped: what the server side costs, which is what a cache changes.

Each is run direct, through ocicache cold (empty cache) and warm.  Then,
in mirror mode, an incremental C{git fetch} after a new upstream commit.
Reported: wall time, throughput, the upstream's pack requests and
bytes, and where the CPU went: the clients' (C{git clone} with its
C{index-pack}, or curl), the upstream's (lighttpd and the
C{git http-backend}/C{pack-objects} it reaps) and ocicache's.  On a
2-core host the clients' CPU divided by 2 bounds a burst's wall time from
below, whatever the server does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from ocitest import free_port
from ocitest.daemon import Daemon, config_text
from ocitest.gitserver import GitServer, git
from ocitest.hop import Hop

__all__ = ["run_git_bench"]

REPO = "bench/big.git"
HOST = "git.bench"


def _pkt(line: str) -> bytes:
    return b"%04x" % (len(line) + 4) + line.encode()


def make_repository(server: GitServer, mib: int, log: Callable[[str], None]) -> str:
    """A repository with C{mib} MiB of incompressible history, 4 MiB per commit."""
    started = time.monotonic()
    server.create(REPO, commits=1, size=1 << 20)
    work = os.path.join(server.root, REPO) + ".work"
    rng = random.Random(20)
    per_commit = 4 << 20
    for index in range(max(1, mib // 4)):
        with open(os.path.join(work, f"data{index % 8}.bin"), "wb") as f:
            f.write(rng.randbytes(per_commit))
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", f"bench commit {index}", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work, timeout=600)
    git("repack", "-adq", cwd=os.path.join(server.root, REPO), timeout=600)
    log(f"git: made {mib} MiB of history in {time.monotonic() - started:.1f}s")
    return server.head(REPO)


def _fetch_body(head: str) -> bytes:
    return (_pkt("command=fetch\n") + _pkt("object-format=sha1\n") + b"0001" + _pkt("thin-pack\n")
            + _pkt("ofs-delta\n") + _pkt(f"want {head}\n") + _pkt("done\n") + b"0000")


def _replay(host: str, port: int, path: str, body: bytes) -> int:
    """
    One v2 fetch POSTed with curl (C, so the client is not what is
    measured), its response read and dropped; returns its length.
    """
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", "--data-binary", "@-",
         "-H", "Content-Type: application/x-git-upload-pack-request", "-H", "Git-Protocol: version=2",
         f"http://{host}:{port}{path}"],
        input=body, capture_output=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"curl failed: {done.stderr.decode(errors='replace').strip()}")
    return int(done.stdout)


def _one_replay(port: int, path: str, body: bytes, index: int) -> int:
    return _replay("127.0.0.1", port, path, body)


def _burst(count: int, one: Callable[[int], Any]) -> tuple[float, list[Any]]:
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = one(index)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{len(errors)} of {count} clients failed: {errors[0]}")
    return wall, results


def _process_cpu(pid: int | None) -> float:
    """
    CPU seconds of process C{pid} and of the children it has reaped
    (C{utime}, C{stime}, C{cutime}, C{cstime} of proc(5)); 0 when gone.
    """
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces: split after it.
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _clients_cpu() -> float:
    """CPU seconds of this process's reaped children: the clients run so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _upstream_packs(hop: Hop) -> tuple[int, int]:
    packs = [r for r in hop.requests if r.method == "POST" and r.bytes_sent > 4096]
    return len(packs), sum(r.bytes_sent for r in packs)


def _start_daemon(workdir: str, hop: Hop, mode: str, label: str) -> Daemon:
    port = free_port()
    text = config_text(port=port, cache_dir=os.path.join(workdir, f"cache-{label}"), upstreams=[])
    text += f'\n[[git]]\nname = "{HOST}"\nurl = "{hop.url}/repos"\nmode = "{mode}"\n'
    path = os.path.join(workdir, f"ocicache-{label}.toml")
    with open(path, "w") as f:
        f.write(text)
    return Daemon(path, port=port, workdir=os.path.join(workdir, f"daemon-{label}")).start()


def run_git_bench(mib: int, clients: int, log: Callable[[str], None], workdir: str) -> dict[str, Any]:
    server = GitServer(os.path.join(workdir, "gitserver")).start()
    hop: Hop | None = None
    daemons: list[Daemon] = []
    rows: dict[str, Any] = {"mib": mib, "clients": clients}
    try:
        head = make_repository(server, mib, log)
        hop = Hop(f"http://127.0.0.1:{server.port}").start()
        cache = _start_daemon(workdir, hop, "cache", "replay")
        daemons.append(cache)
        body = _fetch_body(head)
        clones = os.path.join(workdir, "clones")

        def clone_from(base: str, label: str) -> Callable[[int], int]:
            def one(index: int) -> int:
                into = os.path.join(clones, f"{label}-{index}")
                git("clone", "-q", "--bare", f"{base}/{REPO}", into, cwd=workdir, timeout=1200)
                shutil.rmtree(into, ignore_errors=True)
                return 0
            return one

        direct_base = server.url
        cached_base = f"{cache.url}/git/{HOST}"
        for kind in ("replay", "clone"):
            for label, target in (("direct", "direct"), ("cold", "cached"), ("warm", "cached")):
                if label == "cold":
                    hop.reset()
                if kind == "clone" and label == "cold":
                    # A cold clone needs a cold cache: a new daemon.
                    cache.stop()
                    cache = _start_daemon(workdir, hop, "cache", "clone")
                    daemons.append(cache)
                    cached_base = f"{cache.url}/git/{HOST}"
                cpu_before = {"clients": _clients_cpu(), "upstream": _process_cpu(server.pid),
                              "ocicache": _process_cpu(cache.pid)}
                if kind == "replay":
                    path = (f"/repos/{REPO}/git-upload-pack" if target == "direct"
                            else f"/git/{HOST}/{REPO}/git-upload-pack")
                    port = server.port if target == "direct" else cache.port
                    wall, sizes = _burst(clients, partial(_one_replay, port, path, body))
                    moved = sum(sizes)
                else:
                    base = direct_base if target == "direct" else cached_base
                    wall, _ = _burst(clients, clone_from(base, label))
                    moved = clients * os.path.getsize(_pack_of(server))
                cpu = {"clients": _clients_cpu() - cpu_before["clients"],
                       "upstream": _process_cpu(server.pid) - cpu_before["upstream"],
                       "ocicache": 0.0 if target == "direct" else _process_cpu(cache.pid) - cpu_before["ocicache"]}
                upstream = _upstream_packs(hop) if target == "cached" else (clients, None)
                rows[f"{kind}_{label}"] = {"wall": wall, "mib_s": moved / wall / (1 << 20),
                                           "upstream_packs": upstream[0], "upstream_bytes": upstream[1],
                                           "cpu": cpu}
                log(f"git {kind} {label}: {wall:.2f}s, {moved / wall / (1 << 20):.0f} MiB/s, "
                    f"upstream packs {upstream[0]}, CPU s clients {cpu['clients']:.1f} "
                    f"upstream {cpu['upstream']:.1f} ocicache {cpu['ocicache']:.1f}")
                if label == "cold" and target == "cached":
                    hop.reset()
        # Mirror mode: an incremental fetch after a new upstream commit.
        mirror = _start_daemon(workdir, hop, "mirror", "mirror")
        daemons.append(mirror)
        work = os.path.join(workdir, "incremental")
        git("clone", "-q", f"{mirror.url}/git/{HOST}/{REPO}", work, cwd=workdir, timeout=1200)
        new = server.commit(REPO, "incremental bench", size=1 << 20)
        hop.reset()
        started = time.monotonic()
        git("fetch", "-q", "origin", cwd=work, timeout=600)
        wall = time.monotonic() - started
        got = git("rev-parse", "origin/main", cwd=work).stdout.strip()
        packs, moved_up = _upstream_packs(hop)
        rows["incremental_mirror"] = {"wall": wall, "upstream_packs": packs, "upstream_bytes": moved_up,
                                      "upstream_requests": len(hop.requests), "fresh": got == new}
        log(f"git incremental fetch (mirror): {wall:.2f}s, upstream packs {packs}, fresh {got == new}")
    finally:
        for daemon in daemons:
            daemon.stop()
        if hop is not None:
            hop.stop()
        server.stop()
    return rows


def _pack_of(server: GitServer) -> str:
    packs = os.path.join(server.root, REPO, "objects", "pack")
    return max((os.path.join(packs, name) for name in os.listdir(packs) if name.endswith(".pack")),
               key=os.path.getsize)


def _cpu_cell(row: dict[str, Any]) -> str:
    cpu = row.get("cpu")
    if cpu is None:
        return ""
    return f"{cpu['clients']:.1f} / {cpu['upstream']:.1f} / {cpu['ocicache']:.1f}"


def render(rows: dict[str, Any]) -> str:
    """The results as the Markdown table in docs/git.md."""
    lines = [f"{rows['clients']} concurrent clients, {rows['mib']} MiB of history, on loopback.", "",
             "| | direct | ocicache cold | ocicache warm | warm vs direct |",
             "|---|---:|---:|---:|---:|"]
    for kind, title in (("replay", "v2 fetch replayed (server side)"), ("clone", "git clone (end to end)")):
        direct, cold, warm = (rows[f"{kind}_{label}"] for label in ("direct", "cold", "warm"))
        lines.append(f"| {title}: wall | {direct['wall']:.2f} s | {cold['wall']:.2f} s | {warm['wall']:.2f} s "
                     f"| {direct['wall'] / warm['wall']:.1f}× |")
        lines.append(f"| {title}: throughput | {direct['mib_s']:.0f} MiB/s | {cold['mib_s']:.0f} MiB/s "
                     f"| {warm['mib_s']:.0f} MiB/s | |")
        lines.append(f"| {title}: upstream pack requests | {direct['upstream_packs']} | {cold['upstream_packs']} "
                     f"| {warm['upstream_packs']} | |")
        lines.append(f"| {title}: CPU s, clients / upstream / ocicache | {_cpu_cell(direct)} | {_cpu_cell(cold)} "
                     f"| {_cpu_cell(warm)} | |")
    incremental = rows["incremental_mirror"]
    lines.append(f"| incremental fetch, mirror mode: wall / upstream pack requests | | | "
                 f"{incremental['wall']:.2f} s / {incremental['upstream_packs']} | |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    mib = args.git_mib or (8 if args.tiny else 32 if args.quick else 100)
    clients = 4 if args.tiny else 16
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="ocicache-bench-git-"))
    try:
        rows = run_git_bench(mib, clients, log, workdir)
    finally:
        if args.workdir is None and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    table = render(rows)
    print(table, flush=True)
    target = args.json
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as f:
        json.dump(rows, f, indent=2)
    log(f"wrote {target}")
    return 0

