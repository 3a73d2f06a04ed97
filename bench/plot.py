"""
C{bench/run --plot DIR}: PNG charts of a run's curves, drawn from the same
JSON the run writes (so they show exactly the numbers in the tables).

  - C{scale-throughput.png}, C{scale-cpu.png}: warm throughput and server
    CPU per GiB against concurrent clients, with nginx as the limit
  - C{throughput.png}: every warm throughput row side by side
  - C{manifests.png}: GET by digest at each connection count
  - C{memory.png}: peak RSS against blob size, cold and warm
  - C{idle.png}: throughput and peak RSS with and without idle connections

With several C{[server] workers} settings (C{bench/run --workers}), the
curves and bars have an ocicache series per setting.

matplotlib is optional (C{pip install 'ocicache[bench]'}); without it
L{write_charts} raises L{Unavailable} and the run goes on.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from .report import workers_label

__all__ = ["Unavailable", "write_charts"]

COLOURS = {"ocicache": "#1f77b4", "distribution": "#ff7f0e", "nginx": "#7f7f7f"}
LABELS = {"ocicache": "ocicache", "distribution": "distribution (proxy)", "nginx": "nginx sendfile (limit)"}
WORKERS_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b")
"""ocicache's series, one per workers setting, in the run's order."""


class Unavailable(RuntimeError):
    """
    matplotlib is not installed.
    """


def _pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise Unavailable("matplotlib is not installed (pip install 'ocicache[bench]'); no charts written") from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _comparisons(data: dict[str, Any], scenario: str) -> dict[str, Any]:
    result: dict[str, Any] = data.get("scenarios", {}).get(scenario, {}).get("comparisons", {})
    return result


def _servers(row: dict[str, Any]) -> list[str]:
    return ["ocicache", "distribution", *(["nginx"] if row.get("nginx") is not None else [])]


def _series(settings: list[str]) -> list[tuple[str, str, str, str | None]]:
    """
    C{(server, label, colour, workers setting)} of each series: ocicache
    once per workers setting when there are several, then the peers.
    """
    ocicache: list[tuple[str, str, str, str | None]]
    if len(settings) < 2:
        ocicache = [("ocicache", LABELS["ocicache"], COLOURS["ocicache"], None)]
    else:
        ocicache = [("ocicache", f"ocicache, {workers_label(w)}", WORKERS_COLOURS[i % len(WORKERS_COLOURS)], w)
                    for i, w in enumerate(settings)]
    return [*ocicache, *((k, LABELS[k], COLOURS[k], None) for k in ("distribution", "nginx"))]


def _value(row: dict[str, Any], server: str, setting: str | None, first: str | None) -> float | None:
    """
    C{server}'s value in C{row}, ocicache's with C{setting} (a row measured
    with the C{first} setting only has it as C{ocicache}).
    """
    if setting is None or ("workers" not in row and setting == first):
        value = row.get(server)
    else:
        value = row.get("workers", {}).get(setting, {}).get("ocicache")
    return float(value) if value is not None else None


def _settings(rows: list[dict[str, Any]]) -> list[str]:
    settings: list[str] = []
    for row in rows:
        settings += [w for w in row.get("workers", {}) if w not in settings]
    return settings


def _curve(plt: Any, path: str, title: str, xlabel: str, ylabel: str,
           xs: list[int], rows: list[dict[str, Any]], log_x: bool = True) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    settings = _settings(rows)
    for server, label, colour, setting in _series(settings):
        points = [(x, v) for x, row in zip(xs, rows, strict=True)
                  if (v := _value(row, server, setting, settings[0] if settings else None)) is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label,
                    color=colour, linestyle="--" if server == "nginx" else "-")
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(plt: Any, path: str, title: str, ylabel: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
    settings = _settings([row for _, row in rows])
    series = _series(settings)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(series) * len(rows) + 2), 4.5))
    width = 0.8 / len(series)
    for i, (server, label, colour, setting) in enumerate(series):
        points = [(j + (i - (len(series) - 1) / 2) * width, v) for j, (_, row) in enumerate(rows)
                  if (v := _value(row, server, setting, settings[0] if settings else None)) is not None]
        if points:
            ax.bar([p[0] for p in points], [p[1] for p in points], width, label=label, color=colour)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([label for label, _ in rows], rotation=20, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_charts(data: dict[str, Any], outdir: str) -> list[str]:
    """
    Draw every chart the run has data for into C{outdir}; returns the
    files written.
    """
    plt = _pyplot()
    os.makedirs(outdir, exist_ok=True)
    meta = data.get("meta", {})
    stamp = f"{meta.get('date', '')} · {meta.get('cores', '?')} cores · mode {meta.get('mode', '?')}"
    written: list[str] = []
    warm = _comparisons(data, "warm_throughput")

    # Scale curves.
    ns = sorted(int(m.group(1)) for k in warm if (m := re.fullmatch(r"scale_(\d+)_mib_s", k)))
    if ns:
        blob = meta.get("blob_mib", "?")
        written.append(_curve(plt, os.path.join(outdir, "scale-throughput.png"),
                              f"Warm throughput, {blob} MiB blob\n{stamp}", "concurrent clients", "MiB/s",
                              ns, [warm[f"scale_{n}_mib_s"] for n in ns]))
        written.append(_curve(plt, os.path.join(outdir, "scale-cpu.png"),
                              f"Server CPU per GiB served, {blob} MiB blob (lower is better)\n{stamp}",
                              "concurrent clients", "CPU seconds per GiB",
                              ns, [warm[f"scale_{n}_cpu_per_gib"] for n in ns]))

    # Every warm throughput row.
    rows = [(row["label"].replace(", aggregate", ""), row) for row in warm.values() if row.get("unit") == "MiB/s"]
    if rows:
        written.append(_bars(plt, os.path.join(outdir, "throughput.png"), f"Warm throughput\n{stamp}",
                             "MiB/s (higher is better)", rows))

    # Manifests by connections.
    manifests = _comparisons(data, "warm_manifests")
    plan = meta.get("plan", {})
    points: list[tuple[int, dict[str, Any]]] = []
    if "get_digest_rps" in manifests:
        points.append((int(plan.get("load_connections", 64)), manifests["get_digest_rps"]))
    for key, row in manifests.items():
        m = re.fullmatch(r"get_digest_(\d+)_rps", key)
        if m:
            points.append((int(m.group(1)), row))
    if points:
        points.sort(key=lambda p: p[0])
        written.append(_curve(plt, os.path.join(outdir, "manifests.png"),
                              f"Warm manifest GET by digest\n{stamp}", "connections", "requests/s",
                              [p[0] for p in points], [p[1] for p in points]))

    # Memory against blob size.
    memory = _comparisons(data, "memory")
    sizes = sorted({int(m.group(2)) for k in memory if (m := re.fullmatch(r"peak_rss_(cold|warm)_(\d+)", k))})
    if sizes:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server in ("ocicache", "distribution"):
            for phase, style in (("cold", "-"), ("warm", ":")):
                ys = [memory.get(f"peak_rss_{phase}_{s}", {}).get(server) for s in sizes]
                ax.plot(sizes, ys, marker="o", linestyle=style, color=COLOURS[server], label=f"{server}, {phase}")
        ax.axhline(100, color="#d62728", linewidth=0.8, label="target: 100 MiB")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{s // 1024} GiB" if s >= 1024 else f"{s} MiB" for s in sizes])
        ax.set_ylim(bottom=0)
        ax.set_title(f"Peak RSS with {plan.get('slow_clients', '?')} slow clients\n{stamp}")
        ax.set_xlabel("blob size")
        ax.set_ylabel("MiB (lower is better)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, "memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # Idle connections.
    if "idle_mib_s" in warm and "idle_base_mib_s" in warm:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
        idle = plan.get("idle_connections", "?")
        for ax, keys, ylabel in ((left, ("idle_base_mib_s", "idle_mib_s"), "MiB/s (higher is better)"),
                                 (right, ("idle_base_rss", "idle_rss"), "peak RSS, MiB (lower is better)")):
            if not all(k in warm for k in keys):
                continue
            servers = _servers(warm[keys[0]])
            for i, server in enumerate(servers):
                ys = [warm[k].get(server) for k in keys]
                ax.bar([j + (i - (len(servers) - 1) / 2) * 0.27 for j in range(2)], ys, 0.27, color=COLOURS[server],
                       label=LABELS[server])
            ax.set_xticks(range(2))
            ax.set_xticklabels(["no idle connections", f"{idle} idle connections"])
            ax.set_ylabel(ylabel)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{plan.get('idle_active', 8)} clients downloading, with and without idle connections\n{stamp}")
        fig.tight_layout()
        path = os.path.join(outdir, "idle.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
