"""
One view of the host's metrics from its workers' expositions
(L{ocicache._ops._host_metrics}): counts add up, the store's gauges are the
largest any worker reports, the gauges of what a process has in hand add
up, and what comes out is Prometheus text that parses back.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ocicache._ops._host_metrics import merge_expositions
from ocicache._ops._metrics import Metrics


def _samples(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(exposition.decode())
            for sample in family.samples}


def test_counters_and_histograms_add_up() -> None:
    one, two = Metrics(), Metrics()
    one.request_done("blobs", "GET", 200, 0.01)
    two.request_done("blobs", "GET", 200, 0.2)
    two.request_done("blobs", "GET", 404, 0.2)
    one.evictions.inc(3)
    two.evictions.inc(4)
    merged = _samples(merge_expositions([one.exposition(), two.exposition()]))
    labels = (("code", "200"), ("method", "GET"), ("route", "blobs"))
    assert merged[("ocicache_http_requests_total", labels)] == 2
    assert merged[("ocicache_http_requests_total", (("code", "404"), ("method", "GET"), ("route", "blobs")))] == 1
    assert merged[("ocicache_evictions_total", ())] == 7
    assert merged[("ocicache_http_request_duration_seconds_count", (("route", "blobs"),))] == 3
    assert merged[("ocicache_http_request_duration_seconds_bucket", (("le", "+Inf"), ("route", "blobs")))] == 3
    created = [value for (name, _), value in _samples(one.exposition()).items() if name == "ocicache_evictions_created"]
    assert merged[("ocicache_evictions_created", ())] == min(
        created[0], *[value for (name, _), value in _samples(two.exposition()).items()
                      if name == "ocicache_evictions_created"])


def test_the_stores_gauges_are_the_largest_and_a_process_s_add_up() -> None:
    one, two = Metrics(), Metrics()
    one.cache_size.set(100)
    two.cache_size.set(120)
    one.inflight_downloads.set(2)
    two.inflight_downloads.set(1)
    merged = _samples(merge_expositions([one.exposition(), two.exposition()]))
    assert merged[("ocicache_cache_size_bytes", ())] == 120
    assert merged[("ocicache_inflight_downloads", ())] == 3


def test_one_exposition_is_itself() -> None:
    one = Metrics()
    one.evictions.inc(2)
    one.cache_size.set(5)
    assert _samples(merge_expositions([one.exposition()])) == _samples(one.exposition())
