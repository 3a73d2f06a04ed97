"""
Prometheus metrics, one registry per service so that several services in
one process (tests) never share series.

C{ocicache_bytes_served_total{source}} counts bytes by where the request
found them: a request that started a download (a miss) counts its bytes as
C{upstream}, even though they reach it through the temp file; a request
that joined a download in flight (coalesced) or found the blob stored (a
hit) counts them as C{cache}, since ocicache fetched them only once.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "ocicache_http_requests", "Client HTTP requests.",
            ["route", "method", "code"], registry=registry)
        self.http_duration = Histogram(
            "ocicache_http_request_duration_seconds",
            "Time to answer a client request, to its last byte.",
            ["route"], registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
        self.cache_requests = Counter(
            "ocicache_cache_requests", "Cache lookups by kind and result.",
            ["kind", "result"], registry=registry)
        self.bytes_served = Counter(
            "ocicache_bytes_served", "Bytes sent to clients, by where they came from.",
            ["source"], registry=registry)
        self.upstream_requests = Counter(
            "ocicache_upstream_requests", "Requests sent to upstream registries.",
            ["upstream", "kind", "code"], registry=registry)
        self.upstream_bytes = Counter(
            "ocicache_upstream_bytes", "Blob bytes received from upstream registries.",
            ["upstream"], registry=registry)
        self.upstream_duration = Histogram(
            "ocicache_upstream_request_duration_seconds",
            "Time until an upstream registry answered (headers).",
            ["upstream"], registry=registry)
        self.inflight_downloads = Gauge(
            "ocicache_inflight_downloads", "Blob downloads in progress.", registry=registry)
        self.waiting_clients = Gauge(
            "ocicache_waiting_clients", "Clients being sent a blob that is still downloading.",
            registry=registry)
        self.cache_size = Gauge(
            "ocicache_cache_size_bytes", "Bytes stored in the cache.", registry=registry)
        self.cache_entries = Gauge(
            "ocicache_cache_entries", "Entries stored in the cache, by kind.",
            ["kind"], registry=registry)
        self.evictions = Counter(
            "ocicache_evictions", "Blobs evicted or expired.", registry=registry)
        self.evicted_bytes = Counter(
            "ocicache_evicted_bytes", "Bytes evicted or expired.", registry=registry)
        self.ratelimit_remaining = Gauge(
            "ocicache_upstream_ratelimit_remaining",
            "Pulls left in the upstream's rate-limit window (Docker Hub's ratelimit-remaining).",
            ["upstream"], registry=registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)  # type: ignore[no-any-return]
