"""
The client side of C{ocicache warm}, C{pin}, C{unpin} and C{pins}.

C{warm} talks to the running daemon's registry listener like any client,
so singleflight, the download bounds and the store's rules hold; it never
writes the store itself.  It resolves each reference, takes only the
platforms asked for from an index, then GETs every config and layer and
discards the bytes: the daemon keeps them.  The daemon's C{ocicache-cache}
response header says which were already there.

C{pin}, C{unpin} and C{pins} talk to C{/pins} on the daemon's operator
listener (C{[metrics] listen}, loopback only): the daemon resolves and
fetches the closure itself and refuses a pin that cannot fit.

Blocking HTTP on a few threads: this is a command, not the daemon.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from attrs import define, field

from .._ops._config import Config
from .._spec._closure import (
    INDEX_MEDIA_TYPES,
    Descriptor,
    Platform,
    host_platform,
    image_blobs,
    index_manifests,
    select_platforms,
)
from .._spec._media_types import MANIFEST_MEDIA_TYPES
from .._spec._reference import ImageReference, InvalidReference, parse_image_reference
from ._daemon_client import DaemonClient, Failed, UsageError, error_message, human_size, listen_url

__all__ = ["add_commands", "run_command"]

CONCURRENT_BLOBS = 4




def add_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    warm = command("warm", "fetch whole images through the running daemon, so the cache holds them")
    warm.add_argument("refs", nargs="+", metavar="REF", help="registry/repo:tag or registry/repo@digest")
    warm.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                      help="fetch only this platform of an index (repeatable; default: this host's)")
    warm.add_argument("--dry-run", action="store_true", help="resolve and list the closure; fetch no blob")
    warm.add_argument("--json", action="store_true", help="print the summary as JSON")
    warm.add_argument("--url", help="the daemon's registry URL (default: from [server] listen)")
    pin = command("pin", "pin an image's closure: the daemon fetches it and never evicts or expires it")
    pin.add_argument("ref", metavar="REF")
    pin.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]")
    pin.add_argument("--url", help="the daemon's operator URL (default: from [metrics] listen)")
    pin.add_argument("--json", action="store_true")
    unpin = command("unpin", "release a pin")
    unpin.add_argument("ref", metavar="REF")
    unpin.add_argument("--url", help="the daemon's operator URL (default: from [metrics] listen)")
    pins = command("pins", "list the pins")
    pins.add_argument("--url", help="the daemon's operator URL (default: from [metrics] listen)")
    pins.add_argument("--json", action="store_true")


def run_command(config: Config, arguments: argparse.Namespace) -> int:
    try:
        if arguments.command == "warm":
            return _warm(config, arguments)
        return _pin_command(config, arguments)
    except UsageError as e:
        sys.stderr.write(f"ocicache {arguments.command}: {e}\n")
        return 2


# -- ocicache warm


@define
class _Image:
    """One reference being warmed, and what the daemon said for it."""

    text: str
    image: ImageReference
    digest: str | None = None
    manifests: list[dict[str, Any]] = field(factory=list)
    blobs: list[Descriptor] = field(factory=list)
    results: dict[str, str] = field(factory=dict)
    """Blob digest to the daemon's C{ocicache-cache} answer."""
    failed: list[dict[str, str]] = field(factory=list)

    def summary(self) -> dict[str, Any]:
        def tally(*results: str) -> dict[str, int]:
            chosen = [blob for blob in self.blobs if self.results.get(str(blob.digest)) in results]
            return {"blobs": len(chosen), "bytes": sum(blob.size for blob in chosen)}

        return {
            "ref": self.text, "digest": self.digest, "manifests": self.manifests,
            "fetched": tally("miss", "coalesced"), "cached": tally("hit"),
            "blobs": {"blobs": len(self.blobs), "bytes": sum(blob.size for blob in self.blobs)},
            "failed": self.failed,
        }


def _target(image: ImageReference, kind: str, reference: str) -> str:
    path = f"/v2/{image.repository}/{kind}/{reference}"
    if image.registry is not None:
        path += "?" + urllib.parse.urlencode({"ns": image.registry})
    return path


def _resolve(client: DaemonClient, entry: _Image, platforms: Sequence[Platform]) -> None:
    """The manifests of the closure, through the daemon; the blobs to fetch."""
    accept = {"accept": ", ".join(MANIFEST_MEDIA_TYPES)}
    status, headers, body = client.request("GET", _target(entry.image, "manifests", str(entry.image.reference)),
                                           accept)
    if status != 200:
        raise Failed(f"{entry.text}: {error_message(status, body)}")
    entry.digest = headers.get("docker-content-digest")
    media_type = (headers.get("content-type") or "").split(";")[0].strip()
    entry.manifests.append({"digest": entry.digest, "platform": None, "cache": headers.get("ocicache-cache")})
    bodies = [body]
    if media_type in INDEX_MEDIA_TYPES:
        chosen = select_platforms(index_manifests(body), platforms)
        if not chosen:
            raise Failed(f"{entry.text}: the index has no manifest for {', '.join(map(str, platforms))}")
        bodies = []
        for child in chosen:
            status, headers, child_body = client.request(
                "GET", _target(entry.image, "manifests", str(child.digest)), accept)
            if status != 200:
                raise Failed(f"{entry.text}: {child.digest}: {error_message(status, child_body)}")
            entry.manifests.append({"digest": str(child.digest), "platform": str(child.platform),
                                    "cache": headers.get("ocicache-cache")})
            bodies.append(child_body)
    for manifest in bodies:
        for blob in image_blobs(manifest):
            if all(blob.digest != seen.digest for seen in entry.blobs):
                entry.blobs.append(blob)


class _Plain:
    """Progress as plain lines, for logs and pipes."""

    def __init__(self, stream: Any, total_bytes: int, total_blobs: int) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._blobs = 0
        self._total_blobs = total_blobs

    def __enter__(self) -> _Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def blob_done(self, entry: _Image, blob: Descriptor, result: str) -> None:
        with self._lock:
            self._blobs += 1
            self._stream.write(f"warm: {self._blobs}/{self._total_blobs} {entry.text} {blob.digest}"
                               f" {human_size(blob.size)} {result}\n")
            self._stream.flush()


class _Bar:
    """A rich progress bar on a terminal: bytes, blobs, rate and ETA."""

    def __init__(self, stream: Any, total_bytes: int, total_blobs: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._total_blobs = total_blobs
        self._blobs = 0
        self._progress = Progress(
            TextColumn("warm"), BarColumn(), DownloadColumn(binary_units=True),
            TextColumn("{task.fields[blobs]} blobs"), TransferSpeedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(file=stream), transient=False,
        )
        self._task = self._progress.add_task("warm", total=total_bytes, blobs=f"0/{total_blobs}")
        self._lock = threading.Lock()

    def __enter__(self) -> _Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)

    def blob_done(self, entry: _Image, blob: Descriptor, result: str) -> None:
        with self._lock:
            self._blobs += 1
            self._progress.update(self._task, blobs=f"{self._blobs}/{self._total_blobs}")


def _is_terminal(stream: Any) -> bool:
    from rich.console import Console

    return bool(Console(file=stream).is_interactive)


def _warm(config: Config, arguments: argparse.Namespace) -> int:
    platforms = _platforms(arguments.platform)
    entries = []
    for text in arguments.refs:
        try:
            entries.append(_Image(text, parse_image_reference(text)))
        except InvalidReference as e:
            raise UsageError(f"{text!r} is not an image reference ({e.message})") from None
    client = DaemonClient(arguments.url or listen_url(config.server.listen[0]))
    failures: list[str] = []
    resolved: list[_Image] = []
    for entry in entries:
        try:
            _resolve(client, entry, platforms)
            resolved.append(entry)
        except Failed as e:
            failures.append(str(e))
            entry.failed.append({"ref": entry.text, "error": str(e).removeprefix(f"{entry.text}: ")})
        except OSError as e:
            failures.append(f"{entry.text}: cannot reach the daemon at {client.url}: {e.strerror or e}")
            entry.failed.append({"ref": entry.text, "error": f"cannot reach the daemon: {e.strerror or e}"})
    if not arguments.dry_run:
        _fetch_all(client, resolved, failures, quiet=arguments.json)
    summary = {"url": client.url, "platforms": [str(p) for p in platforms], "dry_run": arguments.dry_run,
               "images": [entry.summary() for entry in entries], "ok": not failures}
    if arguments.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, arguments.dry_run)
    for failure in failures:
        sys.stderr.write(f"ocicache warm: FAILED {failure}\n")
    return 1 if failures else 0


def _fetch_all(client: DaemonClient, entries: list[_Image], failures: list[str], quiet: bool) -> None:
    work = [(entry, blob) for entry in entries for blob in entry.blobs]
    total = sum(blob.size for _, blob in work)
    stream = sys.stderr
    show: type[_Bar] | type[_Plain] = _Bar if _is_terminal(stream) else _Plain
    lock = threading.Lock()

    def fetch(entry: _Image, blob: Descriptor, progress: _Bar | _Plain) -> None:
        try:
            status, headers, body = client.request(
                "GET", _target(entry.image, "blobs", str(blob.digest)), on_chunk=progress.advance)
            if status != 200:
                raise Failed(error_message(status, body))
            result = headers.get("ocicache-cache") or "unknown"
        except (Failed, OSError, http.client.HTTPException) as e:
            why = str(e) or type(e).__name__
            with lock:
                failures.append(f"{entry.text}: blob {blob.digest}: {why}")
                entry.failed.append({"digest": str(blob.digest), "error": why})
            result = "failed"
        entry.results[str(blob.digest)] = result
        if not quiet or show is _Bar:
            progress.blob_done(entry, blob, result)

    with show(stream, total, len(work)) as progress, ThreadPoolExecutor(CONCURRENT_BLOBS) as pool:
        for future in [pool.submit(fetch, entry, blob, progress) for entry, blob in work]:
            future.result()


def _print_summary(summary: dict[str, Any], dry_run: bool) -> None:
    fetched = cached = 0
    fetched_bytes = cached_bytes = 0
    for image in summary["images"]:
        if image["digest"] is None:
            continue
        platforms = ", ".join(f"{m['platform']} {m['digest']}" for m in image["manifests"] if m["platform"])
        print(f"{image['ref']} -> {image['digest']}" + (f" ({platforms})" if platforms else ""))
        if dry_run:
            print(f"  would fetch {image['blobs']['blobs']} blobs ({human_size(image['blobs']['bytes'])})")
            continue
        print(f"  fetched {image['fetched']['blobs']} blobs ({human_size(image['fetched']['bytes'])}),"
              f" already cached {image['cached']['blobs']} ({human_size(image['cached']['bytes'])})")
        fetched += image["fetched"]["blobs"]
        fetched_bytes += image["fetched"]["bytes"]
        cached += image["cached"]["blobs"]
        cached_bytes += image["cached"]["bytes"]
    if not dry_run:
        state = "all warm" if summary["ok"] else "NOT all warm"
        print(f"{state}: {fetched} blobs fetched ({human_size(fetched_bytes)}), {cached} already cached"
              f" ({human_size(cached_bytes)})")


def _platforms(texts: Iterable[str]) -> list[Platform]:
    try:
        platforms = [Platform.parse(text) for text in texts]
    except ValueError as e:
        raise UsageError(str(e)) from None
    return platforms or [host_platform()]


# -- ocicache pin, unpin, pins


def _pin_command(config: Config, arguments: argparse.Namespace) -> int:
    if arguments.url is None and config.metrics.listen is None:
        raise UsageError("pins are managed through the operator listener: set [metrics] listen, or give --url")
    client = DaemonClient(arguments.url or listen_url(config.metrics.listen or "", "https"))
    if arguments.command == "pins":
        method, target = "GET", "/pins"
    else:
        try:
            parse_image_reference(arguments.ref)
        except InvalidReference as e:
            raise UsageError(f"{arguments.ref!r} is not an image reference ({e.message})") from None
        query = [("ref", arguments.ref)]
        if arguments.command == "pin":
            query += [("platform", str(p)) for p in _platforms(arguments.platform)]
        method = "POST" if arguments.command == "pin" else "DELETE"
        target = "/pins?" + urllib.parse.urlencode(query)
    try:
        status, _, body = client.request(method, target)
    except (OSError, http.client.HTTPException) as e:
        sys.stderr.write(f"ocicache {arguments.command}: cannot reach the daemon at {client.url}: {e}\n")
        return 1
    if status != 200:
        sys.stderr.write(f"ocicache {arguments.command}: {arguments.ref if 'ref' in arguments else ''}:"
                         f" {error_message(status, body)}\n")
        return 1
    answer = json.loads(body)
    if getattr(arguments, "json", False):
        print(json.dumps(answer, indent=2))
    elif arguments.command == "pins":
        for pin in answer["pins"]:
            separator = "@" if ":" in pin["reference"] else ":"
            print(f"{pin['upstream']}/{pin['repo']}{separator}{pin['reference']} -> {pin['digest']}"
                  f"  {human_size(pin['bytes'])}  {','.join(pin['platforms'])}")
    elif arguments.command == "pin":
        pinned = answer["pinned"]
        print(f"pinned {arguments.ref} -> {pinned['digest']}: fetched {pinned['fetched']['blobs']} blobs"
              f" ({human_size(pinned['fetched']['bytes'])}), already cached {pinned['cached']['blobs']}")
        for failed in pinned["failed"]:
            sys.stderr.write(f"ocicache pin: FAILED blob {failed['digest']}: {failed['error']}\n")
        return 1 if pinned["failed"] else 0
    else:
        print(f"unpinned {answer['unpinned']}")
    return 0
