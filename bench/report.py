"""
Comparisons, Markdown tables and the JSON result.

Every comparison has C{ocicache}, C{distribution} and C{ratio}; the ratio
is oriented so that C{> 1} means ocicache is better: ocicache/distribution
where higher is better (throughput, requests/s), distribution/ocicache
where lower is better (seconds, latency, memory, upstream traffic).

A zero denominator (ocicache made 0 upstream requests) would make the
ratio infinite; it is computed against the metric's resolution instead
(C{floor}: one request, one byte, ...) and marked C{"ratio_bound": ">="},
shown as C{≥ N×}: a lower bound, always a finite number.

Some comparisons also carry C{nginx}: the same measurement of nginx with
C{sendfile} serving the same file, the physical limit of this machine.
Their C{fraction_of_limit} is ocicache/nginx (nginx/ocicache where lower
is better): 1.0 is as good as the limit.  Tables show those rows with
nginx and that fraction next to the ratio, the others in the usual
two-server table.

With C{bench/run --workers} naming more than one C{[server] workers}
setting, a comparison measured for each also carries C{workers}: ocicache's
value with each setting, the first being C{ocicache} itself; tables then
show a column per setting, and the ratio and the fraction of the limit of
each, in that order.

A section may also carry L{Table}s of its own, for measurements with more
than two servers side by side (the scale-out's three configurations);
they are shown after its comparisons.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Comparison", "Section", "Table", "Target", "median", "render_markdown", "to_json", "workers_label",
           "write_json"]


def workers_label(setting: str) -> str:
    """
    How tables name ocicache with this C{[server] workers} setting.
    """
    return "1 worker" if setting == "1" else f"workers = {setting}"


def median(values: Iterable[float | int | None]) -> float:
    clean = [float(v) for v in values if v is not None]
    return statistics.median(clean) if clean else 0.0


@dataclass
class Comparison:
    key: str
    label: str
    unit: str
    better: str  # "higher" | "lower"
    ocicache: float
    distribution: float
    floor: float = 1.0
    """The metric's resolution, used instead of a zero denominator."""
    digits: int | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    nginx: float | None = None
    """The same measurement of nginx (sendfile): the physical limit."""
    workers: dict[str, float] = field(default_factory=dict)
    """ocicache's value with each C{[server] workers} setting, the first being
    L{ocicache}; empty when the run had one setting."""

    def with_workers(self, setting: str) -> Comparison | None:
        """
        This comparison with ocicache's value for C{setting} in place of
        the first setting's (itself when the run had one setting and
        C{setting} is not another); None if C{setting} was not measured.
        """
        if not self.workers:
            return self
        if setting not in self.workers:
            return None
        return replace(self, ocicache=self.workers[setting], workers={})

    def _fraction(self, ocicache: float) -> float | None:
        if self.nginx is None:
            return None
        num, den = (ocicache, self.nginx) if self.better == "higher" else (self.nginx, ocicache)
        if den == 0:
            return 1.0 if num == 0 else num / (self.floor or 1.0)
        return num / den

    @property
    def fraction_of_limit(self) -> float | None:
        """
        ocicache as a fraction of nginx (higher is better: ocicache/nginx;
        lower is better: nginx/ocicache); None without an nginx value.
        """
        return self._fraction(self.ocicache)

    def _ratio(self, ocicache: float) -> tuple[float, str]:
        num, den = (ocicache, self.distribution) if self.better == "higher" else (self.distribution, ocicache)
        if num == 0 and den == 0:
            return 1.0, "="
        if den == 0:
            return (num / self.floor if self.floor else num), ">="
        return num / den, "="

    @property
    def ratio_parts(self) -> tuple[float, str]:
        return self._ratio(self.ocicache)

    @property
    def ratio(self) -> float:
        return self.ratio_parts[0]

    @property
    def orientation(self) -> str:
        return "ocicache/distribution" if self.better == "higher" else "distribution/ocicache"

    def fmt(self, value: float) -> str:
        digits = self.digits
        if digits is None:
            magnitude = abs(value)
            digits = 0 if magnitude >= 100 or float(value).is_integer() else (1 if magnitude >= 10 else 2)
        return f"{value:,.{digits}f}"

    @staticmethod
    def _fmt_ratio_value(parts: tuple[float, str]) -> str:
        ratio, bound = parts
        text = f"{ratio:.2f}×" if ratio < 100 else f"{ratio:,.0f}×"
        return "≥ " + text if bound == ">=" else text

    def fmt_ratio(self) -> str:
        return self._fmt_ratio_value(self.ratio_parts) + f" ({self.orientation})"

    def fmt_ratios(self, settings: list[str]) -> str:
        """
        The ratio of each workers setting measured, in C{settings}' order.
        """
        values = [self.workers[s] for s in settings if s in self.workers] or [self.ocicache]
        return " / ".join(self._fmt_ratio_value(self._ratio(v)) for v in values) + f" ({self.orientation})"

    def fmt_fractions(self, settings: list[str]) -> str:
        values = [self.workers[s] for s in settings if s in self.workers] or [self.ocicache]
        return " / ".join(f"{self._fraction(v) or 0.0:.2f}" for v in values)

    def to_json(self) -> dict[str, Any]:
        ratio, bound = self.ratio_parts
        out: dict[str, Any] = {
            "ocicache": self.ocicache,
            "distribution": self.distribution,
            "ratio": round(ratio, 4),
            "ratio_orientation": self.orientation,
            "ratio_bound": bound,
            "unit": self.unit,
            "better": self.better,
            "label": self.label,
        }
        if self.nginx is not None:
            out["nginx"] = self.nginx
            out["fraction_of_limit"] = round(self.fraction_of_limit or 0.0, 4)
        if self.samples:
            out["samples"] = self.samples
        if self.workers:
            out["workers"] = {}
            for setting, value in self.workers.items():
                ratio, bound = self._ratio(value)
                out["workers"][setting] = {"ocicache": value, "ratio": round(ratio, 4), "ratio_bound": bound}
                if self.nginx is not None:
                    out["workers"][setting]["fraction_of_limit"] = round(self._fraction(value) or 0.0, 4)
        return out


@dataclass
class Table:
    """
    A Markdown table of already formatted cells, one row per server or
    configuration.
    """

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def render(self) -> list[str]:
        lines = ["| " + " | ".join(self.headers) + " |",
                 "|---|" + "---:|" * (len(self.headers) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return [*lines, ""]

    def to_json(self) -> dict[str, Any]:
        return {"headers": self.headers, "rows": self.rows}


@dataclass
class Section:
    key: str
    title: str
    comparisons: list[Comparison] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def add(self, key: str, label: str, unit: str, better: str, ocicache: float, distribution: float,
            **kwargs: Any) -> Comparison:
        if kwargs.get("nginx") is not None:
            kwargs["nginx"] = float(kwargs["nginx"])
        if kwargs.get("workers"):
            kwargs["workers"] = {k: float(v) for k, v in kwargs["workers"].items()}
        c = Comparison(key, label, unit, better, float(ocicache), float(distribution), **kwargs)
        self.comparisons.append(c)
        return c

    def get(self, key: str) -> Comparison | None:
        for c in self.comparisons:
            if c.key == key:
                return c
        return None

    @property
    def workers_settings(self) -> list[str]:
        """
        The C{[server] workers} settings its comparisons were measured with,
        in the run's order (none when the run had one setting).
        """
        settings: list[str] = []
        for c in self.comparisons:
            settings += [s for s in c.workers if s not in settings]
        return settings

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "comparisons": {c.key: c.to_json() for c in self.comparisons},
            "tables": [t.to_json() for t in self.tables],
            "notes": self.notes,
            "details": self.details,
            "error": self.error,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class Target:
    name: str
    met: bool | None  # None: not measured
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "met": self.met, "detail": self.detail}


def _render_workers(section: Section, settings: list[str]) -> list[str]:
    """
    The comparisons of a section measured with several workers settings:
    a column of ocicache's values per setting, and the ratio (and the
    fraction of the limit) of each, in the same order; a row measured with
    the first setting only has a dash in the others.
    """
    columns = " | ".join(f"ocicache, {workers_label(s)}" for s in settings)
    lines: list[str] = []
    for rows, limit in (([c for c in section.comparisons if c.nginx is not None], True),
                        ([c for c in section.comparisons if c.nginx is None], False)):
        if not rows:
            continue
        each = " / ".join(workers_label(s) for s in settings)
        header = f"| measurement | {columns} | distribution |"
        rule = "|---|" + "---:|" * (len(settings) + 1)
        if limit:
            header += " nginx (sendfile) |"
            rule += "---:|"
        header += f" ratio (> 1: ocicache better; {each}) |"
        rule += "---|"
        if limit:
            header += " fraction of the limit (ocicache/nginx) |"
            rule += "---:|"
        lines += [header, rule]
        for c in rows:
            arrow = "higher is better" if c.better == "higher" else "lower is better"
            values = c.workers or {settings[0]: c.ocicache}
            cells = " | ".join(c.fmt(values[s]) if s in values else "–" for s in settings)
            line = f"| {c.label} ({c.unit}, {arrow}) | {cells} | {c.fmt(c.distribution)} |"
            if limit:
                assert c.nginx is not None
                line += f" {c.fmt(c.nginx)} |"
            line += f" {c.fmt_ratios(settings)} |"
            if limit:
                line += f" {c.fmt_fractions(settings)} |"
            lines.append(line)
        lines.append("")
    return lines


def render_section(section: Section) -> str:
    lines = [f"### {section.title}", ""]
    settings = section.workers_settings
    with_limit = [c for c in section.comparisons if c.nginx is not None and len(settings) < 2]
    two_way = [c for c in section.comparisons if c.nginx is None and len(settings) < 2]
    if len(settings) > 1:
        lines += _render_workers(section, settings)
    if with_limit:
        lines += [
            "| measurement | ocicache | distribution | nginx (sendfile) | ratio (> 1: ocicache better) "
            "| fraction of the limit (ocicache/nginx) |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for c in with_limit:
            arrow = "higher is better" if c.better == "higher" else "lower is better"
            assert c.nginx is not None
            lines.append(
                f"| {c.label} ({c.unit}, {arrow}) | {c.fmt(c.ocicache)} | {c.fmt(c.distribution)} "
                f"| {c.fmt(c.nginx)} | {c.fmt_ratio()} | {c.fraction_of_limit or 0.0:.2f} |"
            )
        lines.append("")
    if two_way:
        lines += [
            "| measurement | ocicache | distribution | ratio (> 1: ocicache better) |",
            "|---|---:|---:|---|",
        ]
        for c in two_way:
            arrow = "higher is better" if c.better == "higher" else "lower is better"
            lines.append(
                f"| {c.label} ({c.unit}, {arrow}) | {c.fmt(c.ocicache)} | {c.fmt(c.distribution)} | {c.fmt_ratio()} |"
            )
        lines.append("")
    for table in section.tables:
        lines += table.render()
    if section.error:
        lines += [f"**FAILED:** {section.error}", ""]
    for note in section.notes:
        lines.append(f"- {note}")
    if section.notes:
        lines.append("")
    return "\n".join(lines)


def render_markdown(meta: dict[str, Any], sections: list[Section], targets: list[Target]) -> str:
    head = [
        f"## ocicache vs distribution {meta.get('distribution_version', '')} (proxy mode)",
        "",
        f"{meta['date']} · {meta['cores']} cores ({meta.get('cpu', '?')}) · mode `{meta['mode']}` · "
        f"blob {meta['blob_mib']} MiB · load average at start {meta.get('loadavg_start', '?')} · "
        f"ocicache {meta.get('ocicache_version', '?')} ({meta.get('git', '?')})",
        "",
    ]
    body = [render_section(s) for s in sections]
    tail: list[str] = []
    if targets:
        tail += ["### Targets", "", "| target | met | measured |", "|---|---|---|"]
        for t in targets:
            mark = "n/a" if t.met is None else ("met" if t.met else "**missed**")
            tail.append(f"| {t.name} | {mark} | {t.detail} |")
        tail.append("")
    return "\n".join(head + body + tail)


def _finite(obj: Any) -> Any:
    """
    JSON has no NaN or infinity: turn any that slipped through into null.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(meta: dict[str, Any], sections: list[Section], targets: list[Target]) -> dict[str, Any]:
    data: dict[str, Any] = _finite({
        "meta": meta,
        "scenarios": {s.key: s.to_json() for s in sections},
        "targets": [t.to_json() for t in targets],
    })
    return data


def write_json(path: str, data: dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
