"""
Prometheus metrics, one registry per service so that several services in
one process (tests) never share series.

C{ocicache_bytes_served_total{source}} counts bytes by where the request
found them: a request that started a download (a miss) counts its bytes as
C{upstream}, even though they reach it through the temp file; a request
that joined a download in flight (coalesced) or found the blob stored (a
hit) counts them as C{cache}, since ocicache fetched them only once.

The cache's size and entry counts are not scanned at scrape time: blobs
come from the eviction policy's running total (L{ocicache._storage._capacity}),
manifests from a L{ManifestTally} filled by one scan of C{manifests/} at
start-up (in a thread) and kept up to date as manifests are stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "FileMetrics", "ManifestTally", "Metrics"]


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
        self.sendfile_bytes = Counter(
            "ocicache_sendfile_bytes", "Blob bytes sent to clients by sendfile(2), never copied through Python.",
            registry=registry)
        self.scrubbed_bytes = Counter(
            "ocicache_scrubbed_bytes", "Bytes of stored blobs re-hashed by the background scrub.",
            registry=registry)
        self.corrupt_blobs = Counter(
            "ocicache_corrupt_blobs", "Stored blobs found not to match their digest, and quarantined.",
            ["found_by"], registry=registry)
        self.upstream_requests = Counter(
            "ocicache_upstream_requests", "Requests sent to upstream registries.",
            ["upstream", "kind", "code"], registry=registry)
        self.files_requests = Counter(
            "ocicache_files_requests", "File lookups under /files/, by remote and result.",
            ["remote", "result"], registry=registry)
        self.files_upstream_requests = Counter(
            "ocicache_files_upstream_requests", "Requests sent to file remotes, by status code.",
            ["remote", "code"], registry=registry)
        self.files_upstream_bytes = Counter(
            "ocicache_files_upstream_bytes", "Body bytes received from file remotes.",
            ["remote"], registry=registry)
        self.files_refused = Counter(
            "ocicache_files_refused", "File bodies not kept: their length or their index's checksum did not match.",
            ["remote"], registry=registry)
        self.files_size = Gauge(
            "ocicache_files_size_bytes", "Bytes of the files stored for file remotes.", registry=registry)
        self.files_entries = Gauge(
            "ocicache_files_entries", "Files stored for file remotes.", registry=registry)
        self.files_evictions = Counter(
            "ocicache_files_evictions", "Stored files evicted to stay within [cache] max_size.",
            registry=registry)
        self.upstream_bytes = Counter(
            "ocicache_upstream_bytes", "Blob bytes received from upstream registries.",
            ["upstream"], registry=registry)
        self.upstream_duration = Histogram(
            "ocicache_upstream_request_duration_seconds",
            "Time until an upstream registry answered (headers).",
            ["upstream"], registry=registry)
        self.fleet_claims = Counter(
            "ocicache_fleet_claims", "Misses in a fleet (blobs, git responses), by what the fleet step decided:"
            " lock (this node fetches it), peer (streamed from another node), alone (Redis unreachable:"
            " local singleflight).",
            ["outcome"], registry=registry)
        self.fleet_redis_up = Gauge(
            "ocicache_fleet_redis_up", "1 while Redis answers this fleet node, else 0.", registry=registry)
        self.inflight_downloads = Gauge(
            "ocicache_inflight_downloads", "Blob downloads in progress.", registry=registry)
        self.waiting_clients = Gauge(
            "ocicache_waiting_clients", "Clients being sent a blob that is still downloading.",
            registry=registry)
        self.cache_size = Gauge(
            "ocicache_cache_size_bytes",
            "Bytes stored on the local disk (with the S3 backend: its local tier).", registry=registry)
        self.cache_entries = Gauge(
            "ocicache_cache_entries", "Entries stored on the local disk, by kind.",
            ["kind"], registry=registry)
        self.s3_store_size = Gauge(
            "ocicache_s3_store_bytes", "Bytes of blobs in the S3 store, as this node's index counts them.",
            registry=registry)
        self.s3_store_blobs = Gauge(
            "ocicache_s3_store_blobs", "Blobs in the S3 store, as this node's index counts them.",
            registry=registry)
        self.evictions = Counter(
            "ocicache_evictions", "Blobs evicted or expired.", registry=registry)
        self.evicted_bytes = Counter(
            "ocicache_evicted_bytes", "Bytes evicted or expired.", registry=registry)
        self.s3_uploads = Counter(
            "ocicache_s3_uploads", "Multipart uploads of downloads into the S3 store, by outcome.",
            ["outcome"], registry=registry)
        self.s3_bytes = Counter(
            "ocicache_s3_bytes", "Blob bytes sent to (uploaded) or read from (downloaded) the S3 store.",
            ["direction"], registry=registry)
        self.ratelimit_remaining = Gauge(
            "ocicache_upstream_ratelimit_remaining",
            "Pulls left in the upstream's rate-limit window (Docker Hub's ratelimit-remaining).",
            ["upstream"], registry=registry)
        self.policy_denied = Counter(
            "ocicache_policy_denied", "Requests the policy refused (403), by upstream and the rule that decided.",
            ["upstream", "rule"], registry=registry)
        self.config_reloads = Counter(
            "ocicache_config_reloads", "SIGHUP reloads of the config file: applied or refused.",
            ["result"], registry=registry)
        # Warming and pinning (the daemon's own [[warm]] runs and pins).
        self.warm_runs = Counter(
            "ocicache_warm_runs", "Warm runs of one image by the daemon ([[warm]], pins), by result.",
            ["result"], registry=registry)
        self.warm_blobs = Counter(
            "ocicache_warm_blobs", "Blobs of warm runs, by outcome: fetched, cached (already there) or failed.",
            ["outcome"], registry=registry)
        self.pinned_bytes = Gauge(
            "ocicache_pinned_bytes", "Bytes of the blobs pinned closures reference (counted toward max_size).",
            registry=registry)
        self.ratelimit_limit = Gauge(
            "ocicache_upstream_ratelimit_limit",
            "Pulls allowed in the upstream's rate-limit window (Docker Hub's ratelimit-limit).",
            ["upstream"], registry=registry)
        self.ratelimit_window = Gauge(
            "ocicache_upstream_ratelimit_window_seconds",
            "The upstream's rate-limit window (the ;w= of its rate-limit headers).",
            ["upstream"], registry=registry)
        self.ratelimit_limited = Gauge(
            "ocicache_upstream_ratelimited",
            "1 while the upstream is left alone after a 429, until its Retry-After or window passes.",
            ["upstream"], registry=registry)
        self.circuit_open = Gauge(
            "ocicache_upstream_circuit_open",
            "1 while the upstream's circuit is open (not called after failures in a row) or it is offline.",
            ["upstream"], registry=registry)
        self.circuit_changes = Counter(
            "ocicache_upstream_circuit_changes", "The upstream's circuit opening and closing.",
            ["upstream", "to"], registry=registry)
        self.pull_equivalents = Counter(
            "ocicache_pull_equivalents",
            "Manifest GETs, as Docker Hub counts pulls: made upstream, or saved (a client's GET answered"
            " without one).",
            ["upstream", "outcome"], registry=registry)
        self.client_auth = Counter(
            "ocicache_client_auth", "Client credentials checked, by how they came (basic, bearer,"
            " none, other) and whether they proved an identity (ok, refused).",
            ["method", "result"], registry=registry)
        self.password_checks = Counter(
            "ocicache_password_checks", "bcrypt checks of htpasswd passwords run (a memo spares the rest).",
            registry=registry)
        # Git repositories ([[git]], docs/git.md).
        self.git_requests = Counter(
            "ocicache_git_requests", "Git requests, by endpoint (refs, upload-pack) and result: hit, miss,"
            " coalesced, passthrough (never kept: refs, ls-refs, negotiation), stale, mirror.",
            ["upstream", "endpoint", "result"], registry=registry)
        self.git_upstream_requests = Counter(
            "ocicache_git_upstream_requests", "Requests sent to git upstreams, by kind (refs, upload-pack)"
            " and status code (error: no answer).",
            ["upstream", "kind", "code"], registry=registry)
        self.git_upstream_bytes = Counter(
            "ocicache_git_upstream_bytes", "Upload-pack response bytes received from git upstreams.",
            ["upstream"], registry=registry)
        self.git_bytes_saved = Counter(
            "ocicache_git_bytes_saved", "Upload-pack response bytes sent to clients that no upstream"
            " request fetched for them (hits and coalesced).",
            ["upstream"], registry=registry)
        self.git_entries = Gauge(
            "ocicache_git_entries", "Upload-pack responses kept in the store.", registry=registry)
        self.git_size = Gauge(
            "ocicache_git_size_bytes", "Bytes of the upload-pack responses kept in the store.", registry=registry)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """
        Count one answered client request: methods other than C{GET} and
        C{HEAD} share one label, so a client cannot grow the series.
        """
        self.http_requests.labels(route, method if method in ("GET", "HEAD") else "other", str(status)).inc()
        self.http_duration.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ManifestTally:
    """
    How many manifests the store holds and their bytes, kept in memory.

    Filled once from a scan of the store (L{loaded}, with the result of
    C{Store.walk(Kind.MANIFEST)} run in a thread) and kept current with
    L{added} for each manifest stored afterwards.  Digests are remembered,
    so a manifest stored again (a tag moved back, two tags for one
    digest) is counted once, and one stored while the scan ran is not
    counted twice.
    """

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}
        self.size = 0

    def __len__(self) -> int:
        return len(self._sizes)

    def added(self, digest: str, size: int) -> None:
        if digest not in self._sizes:
            self._sizes[digest] = size
            self.size += size

    def removed(self, digest: str) -> None:
        self.size -= self._sizes.pop(digest, 0)

    def loaded(self, entries: Iterable[tuple[str, int]]) -> None:
        for digest, size in entries:
            self.added(digest, size)


class FileMetrics:
    """What the file service reports (L{ocicache._files._service.Observer}), as metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def request(self, remote: str, result: str) -> None:
        self._metrics.files_requests.labels(remote, result).inc()

    def upstream(self, remote: str, code: str, seconds: float) -> None:
        self._metrics.files_upstream_requests.labels(remote, code).inc()

    def upstream_bytes(self, remote: str, count: int) -> None:
        self._metrics.files_upstream_bytes.labels(remote).inc(count)

    def refused(self, remote: str) -> None:
        self._metrics.files_refused.labels(remote).inc()

    def evicted(self, count: int, size: int) -> None:
        self._metrics.files_evictions.inc(count)
