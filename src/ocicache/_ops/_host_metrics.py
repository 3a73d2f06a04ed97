"""
One view of the host's metrics from its worker processes' expositions.

Each worker counts what it did; the host's count is the sum.  A gauge is
the state of the host (the store's bytes and entries, an upstream's quota
or circuit) that every worker reports alike, so the merged value is the
largest any reports, except the gauges of what a process has in hand
(downloads in flight, clients waiting on them), which add up.  A
counter's C{_created} is the earliest.  The text format is Prometheus's
(exposition formats, "Text-based format"), parsed and written by
prometheus-client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["PER_PROCESS_GAUGES", "merge_expositions"]

PER_PROCESS_GAUGES = frozenset({"ocicache_inflight_downloads", "ocicache_waiting_clients"})
"""The gauges of what one process has in hand: summed over the workers."""

_Sample = tuple[str, tuple[tuple[str, str], ...]]


class _Merged:
    """A collector of families already merged (what L{generate_latest} writes out)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_expositions(expositions: Sequence[bytes]) -> bytes:
    """The host's exposition: C{expositions}, one per worker, merged."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[_Sample, float]] = {}
    for exposition in expositions:
        for family in text_string_to_metric_families(exposition.decode("utf-8")):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            largest = family.type == "gauge" and family.name not in PER_PROCESS_GAUGES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = samples.get(key)
                if seen is None:
                    samples[key] = sample.value
                elif sample.name.endswith("_created"):
                    samples[key] = min(seen, sample.value)
                elif largest:
                    samples[key] = max(seen, sample.value)
                else:
                    samples[key] = seen + sample.value
    out = []
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        out.append(family)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(out))
    return generate_latest(registry)
