"""
The tables about this node itself: C{[server]} (the listeners and the
bounds on each client connection), C{[cache]} (the disk cache) and
C{[metrics]}.  Each class is both the schema of its table and the value
the rest of the daemon reads.
"""

from __future__ import annotations

import os
from typing import Literal

from attrs import frozen

from ._fields import key
from ._types import (
    BOOLEAN,
    POSITIVE,
    Choice,
    CountOrAuto,
    Duration,
    Integer,
    Kind,
    ListOf,
    Number,
    OrNever,
    Size,
    SizeOrPercent,
    Text,
)

__all__ = ["CacheConfig", "MetricsConfig", "ServerConfig", "default_cache_dir"]

_HEAD_SIZE = Size(1 << 10, 1 << 20, "must be between 1KiB and 1MiB")
"""Below these no real client works; above them one connection could hold megabytes of headers."""


@frozen
class ServerConfig:
    """
    The registry listeners, and the bounds each client connection is held
    to.
    """

    listen: tuple[str, ...] = key(
        ListOf(Text(bool), empty="expected a non-empty list of endpoint strings",
               refusal="expected a non-empty list of endpoint strings"),
        "Twisted endpoint strings, one per listener; --listen replaces the list.",
        default=("tcp:5000:interface=127.0.0.1",),
        note="""Twisted endpoint strings, one per listener. --listen on the command line
replaces this list. Examples:
  "tcp:5000:interface=127.0.0.1"                              plain HTTP on loopback
  "tcp6:5000:interface=\\\\:\\\\:"                                  every IPv6 (and IPv4) address
  "ssl:5443:privateKey=/etc/ocicache/key.pem:certKey=/etc/ocicache/cert.pem"   HTTPS
  "systemd:domain=INET:index=0"                               a socket from systemd (ocicache.socket)""")
    drain_timeout: float = key(
        Duration(), "On SIGTERM: how long client transfers in flight may take to finish.", default=30.0,
        note="On SIGTERM: how long client transfers in flight may take to finish\nbefore they are cut.")
    log_format: str = key(Choice(("text", "json")), '"text" or "json" (one JSON object per log line).',
                          default="text")
    header_timeout: float = key(
        POSITIVE, "The whole request head must arrive within this (slowloris).", default=10.0,
        note="""Bounds on every client connection. ocicache never reads a request body:
a request that announces one (Content-Length above 0, or any
Transfer-Encoding) is answered as soon as its head is in (405 for push and
delete methods, 413 for a GET or HEAD) and the connection closed.
The whole request head (request line and header fields) must arrive within
this, counted from the connection, or on a keep-alive connection from the
next request's first byte; else the connection is closed (slowloris).""")
    idle_timeout: float = key(
        POSITIVE, "A keep-alive connection with no request in progress is closed after this.", default=60.0)
    stall_timeout: float = key(
        POSITIVE, "A client that takes no response bytes for this long is cut mid-transfer.", default=60.0,
        note="""A client that takes no response bytes for this long (its socket buffer
full) is cut mid-transfer: it sees a body shorter than Content-Length.""")
    max_connections: int | None = key(
        Integer(1, refusal="must be at least 1 (unset: derived from the descriptor limit)"),
        "Client connections at once; past it, 503 with Retry-After.", example=10000,
        shown="(limit - 256) / 2 of RLIMIT_NOFILE",
        note="""Client connections at once. Past it, new connections get a 503 with
Retry-After and are closed; those already open are served as before.
Default: derived from the descriptor limit (RLIMIT_NOFILE, whose soft
value ocicache raises to the hard one at start-up): (limit - 256) / 2,
e.g. 384 under `ulimit -n 1024`. A low limit is warned about at start-up.""")
    max_connections_per_address: int | None = key(
        Integer(0, refusal="must be 0 (no limit) or more"),
        "Client connections at once from one address; unset: a quarter of max_connections; 0: no limit.",
        example=96, shown="max_connections / 4",
        note="""Client connections at once from one source address, so that one address
(an attacker reopening sockets as fast as they close) cannot take every
slot; past it, that address's new connections get a 503. Default: a quarter
of max_connections. At max_connections, the connection idle longest is
closed to admit a new one. Behind a load balancer or a NAT, where every
client has the same address, set 0 (no limit) and let the balancer limit
clients.""")
    max_header_bytes: int = key(_HEAD_SIZE, "The request's header fields at most, in bytes; more: 431.",
                                default=16 << 10)
    max_headers: int = key(Integer(1, 10_000, "must be between 1 and 10000"),
                           "The request's header fields at most, in number; more: 431.", default=100)
    max_request_line: int = key(_HEAD_SIZE, "The request line (method, target, version) at most; longer: 414.",
                                default=8 << 10)
    workers: int | Literal["auto"] = key(
        CountOrAuto(1, 256), 'Worker processes serving the listeners, all on one store; "auto": one per core.',
        default=1, note="""Worker processes serving the listeners ("auto": one per core). The main
process holds the listeners and restarts a worker that dies; every worker
serves from the one store, with one upstream fetch per key and one max_size
(see Worker processes in the operations docs). A change takes a restart.""")
    sendfile: bool = key(
        BOOLEAN, "Blob bodies on plain TCP go out with sendfile(2); TLS listeners always use the streamer.",
        default=True, note="""Blob bodies on plain TCP go from the file to the socket with sendfile(2),
never copied through Python. TLS listeners always use the streamer.""")


def default_cache_dir() -> str:
    """
    The per-user default cache directory: C{$XDG_CACHE_HOME/ocicache}, or
    C{~/.cache/ocicache}.  systemd's C{CacheDirectory=} sets
    C{$CACHE_DIRECTORY}, which wins over both.
    """
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return systemd.split(":")[0]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ocicache")


@frozen
class _CacheDir(Kind[str]):
    """A directory; empty: the default (L{default_cache_dir})."""

    name = "path"

    def __call__(self, value: object) -> str:
        return Text()(value) or default_cache_dir()


@frozen
class CacheConfig:
    """The disk cache: where it lives, how big it grows, how fresh tags are."""

    dir: str = key(
        _CacheDir(), "Where blobs, manifests and the metadata database live.", factory=default_cache_dir,
        example="/var/cache/ocicache", commented=False,
        shown="$CACHE_DIRECTORY, else $XDG_CACHE_HOME/ocicache, else ~/.cache/ocicache",
        note="""Where blobs, manifests and the metadata database live. Default:
$CACHE_DIRECTORY (set by systemd's CacheDirectory=), else
$XDG_CACHE_HOME/ocicache, else ~/.cache/ocicache.""")
    tag_ttl: float = key(
        Duration(), "How long a tag -> digest mapping is trusted before an upstream HEAD revalidates it.",
        default=300.0, note="""How long a tag -> digest mapping is trusted before it is revalidated
with an upstream HEAD (HEADs do not count against Docker Hub's limit).""")
    max_size: int | None = key(
        Size(1 << 20, refusal="must be at least 1MiB"),
        "The most bytes to keep: blobs, git responses and mirrors, and files together; unset: no limit.",
        example="50GiB", commented=False, note="""The most bytes to keep, of blobs, git responses and mirrors, and
files of package remotes together (manifests are not counted). When a new entry of any kind would cross it,
entries of any kind are evicted (S3-FIFO) down to 90%. Unset: no limit.""")
    min_free: int | float | None = key(
        SizeOrPercent(), "Keep at least this much of the filesystem free: a size, or a percentage.",
        example="5%", commented=False)
    """Bytes (C{int}) or a fraction of the filesystem (C{float})."""
    blob_ttl: float | None = key(Duration(), "Remove blobs not read for this long; unset: never.", example="30d")
    janitor_interval: float = key(
        POSITIVE, "How often the janitor runs (access-time batching, expiry, eviction).", default=60.0)
    max_downloads: int = key(
        Integer(1), "Upstream fetches at once, all upstreams together.", default=32,
        note="""Upstream fetches at once, all upstreams together (see also the
per-upstream max_downloads). Requests past it wait in a queue of
download_queue, manifests first; past the queue: 429 with Retry-After.""")
    download_queue: int = key(Integer(0, refusal="must be 0 or more"),
                              "Requests that may wait for a fetch; past it they get 429.", default=256)
    abandon_after: float = key(
        POSITIVE, "Seconds a download may go unread before it is abandoned.", default=10.0,
        note="""A download nobody reads for this long (every client hung up) is
abandoned, unless abandon_below of it has arrived already; nothing
partial is ever kept. Long enough for containerd to resume with Range.""")
    abandon_below: float = key(Number(0.0, 1.0, "must be a fraction from 0 to 1"),
                               "Only a download with less than this fraction of its body in is abandoned.",
                               default=0.5)
    scrub_rate: int = key(
        Size(), "Bytes per second the background scrub re-hashes; 0: no scrub.", default=16 << 20,
        note="""The background scrub re-hashes stored blobs at this rate per second and
quarantines one that no longer matches its digest. 0: off.""")
    manifest_ttl: float | None = key(
        OrNever(Duration(positive=True, refusal='must be positive, or "never"')),
        'Seconds an unreferenced manifest is kept unread; "never": forever.', default=30 * 86400.0,
        note="""A manifest that no tag resolves to and no stored index refers to (tag
rows are kept 30 days past their last revalidation) is removed once
unread for this long. Manifests do not count towards max_size.
"never": keep them all.""")
    referrers_ttl: float = key(
        Duration(), "How long a referrers listing is reused before the upstream is asked again.", default=60.0,
        note="""How long a referrers listing (GET /v2/<name>/referrers/<digest>: the
signatures and SBOMs of a manifest) is reused before the upstream is
asked again. Short, since a signature may be pushed any moment; "0s"
asks every time (concurrent requests still share one).""")
    protect_recent: float = key(
        Duration(), "Blobs of a manifest read this recently are never evicted (a pull in progress).",
        default=3600.0, note="""Eviction and expiry never remove a blob that a manifest read within
this long refers to: an image being pulled keeps its layers until the
pull is done. "0s": off (only pins protect).""")
    negative_ttl: float = key(
        Duration(), "How long an upstream 404 for a tag or repository is remembered; 0: not at all.",
        default=30.0, note="""An upstream 404 is remembered this long, so a client asking for a missing
tag or repository in a loop costs one upstream request per negative_ttl.
A missing digest (manifest or blob) gets the shorter negative_digest_ttl,
since a push may bring it any moment. Clients still get the registry's
404 (MANIFEST_UNKNOWN, NAME_UNKNOWN, BLOB_UNKNOWN). 0: not remembered.""")
    negative_digest_ttl: float = key(
        Duration(), "How long an upstream 404 for a digest is remembered; 0: not at all.", default=5.0)


@frozen
class MetricsConfig:
    """
    Prometheus /metrics, /healthz and /readyz on their own listener.  It
    also serves /pins to the loopback interface only: what C{ocicache pin},
    C{unpin} and C{pins} talk to.
    """

    listen: str | None = key(Text(), "The operator listener's Twisted endpoint; unset: off.",
                             example="tcp:9402:interface=127.0.0.1", commented=False)
