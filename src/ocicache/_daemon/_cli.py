"""
The C{ocicache} operator command: C{verify}, C{gc}, C{stats}, C{--version};
and C{warm}, C{pin}, C{unpin}, C{pins}, which talk to the running daemon
(L{ocicache._daemon._warm_cli}).

Each reads the same configuration as the daemon and works on its cache
directory directly, so it is safe to run while the daemon runs: files are
only ever read, or removed (which a reader holding the file open does not
notice), and SQLite in WAL mode lets both write.

None of them hangs: a corrupt or locked metadata database is said in one
line on stderr with exit status 2 (C{verify --repair} moves a corrupt one
aside and creates a new one, as the daemon does at start-up), and SIGINT or
SIGTERM ends the command at once, whatever its database thread is waiting
for.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from functools import partial
from types import FrameType
from typing import Any, TextIO

from twisted.internet.defer import Deferred

from .._files._key import FileKey
from .._files._service import TABLE as FILES_TABLE
from .._git._books import TABLE as GIT_TABLE
from .._git._books import remove_entries
from .._ops._config import Config, ConfigError, load_config
from .._ops._reactor import Reactor
from .._spec._reference import Digest
from .._storage._budget import Budget
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._janitor import Janitor, verify_file
from .._storage._metadata import Metadata, MetadataCorrupt, MetadataUnavailable, QuotaRow
from .._storage._store import Kind, Store
from .._version import __version__
from ._admin_cli import ADMIN_COMMANDS, add_admin_commands, run_admin_command
from ._clients_cli import add_clients_command, run_clients
from ._daemon_client import human_size
from ._warm_cli import add_commands, run_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocicache", description="Operate an ocicache store.")
    parser.add_argument("--version", action="version", version=f"ocicache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--config", "-c", help="the daemon's TOML configuration (default: embedded)")
        return sub

    verify = command("verify", "re-hash every stored blob and manifest; exit 1 if any is corrupt or missing")
    verify.add_argument("--repair", action="store_true",
                        help="remove bad entries so they are fetched again on the next request")
    command("gc", "run expiry and eviction now, and print what was freed")
    stats = command("stats", "print the store's size, entries, biggest repositories, oldest entry"
                             " and pulls per upstream")
    stats.add_argument("--json", action="store_true", help="print JSON")
    add_commands(command)
    add_clients_command(command)
    add_admin_commands(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _exit_on_signals()
    arguments = _parser().parse_args(argv)
    try:
        config = load_config(arguments.config)
    except ConfigError as e:
        sys.stderr.write(f"ocicache: {e}\n")
        return 2
    if arguments.command in ADMIN_COMMANDS:
        return run_admin_command(config, arguments)
    if arguments.command == "clients":
        # This host's client files: neither the store nor the daemon.
        return run_clients(config, arguments)
    if arguments.command in ("warm", "pin", "unpin", "pins"):
        # Through the running daemon: never the store behind its back.
        return run_command(config, arguments)
    if not os.path.isdir(config.cache.dir):
        sys.stderr.write(f"ocicache: no cache at {config.cache.dir}\n")
        return 2
    run = {"verify": _verify, "gc": _gc, "stats": _stats}[arguments.command]
    return _react(run, config, arguments)


def _react(run: Any, config: Config, arguments: argparse.Namespace) -> int:
    """
    Run C{run} under the reactor; C{react} exits the process with its code.
    """
    from twisted.internet.task import react

    async def body(reactor: Reactor) -> None:
        # react calls this before the reactor runs, and the reactor installs
        # its own handlers (a graceful stop) as it starts: ours again after.
        reactor.callWhenRunning(_exit_on_signals)
        path = os.path.join(os.path.abspath(config.cache.dir), "metadata.sqlite")
        metadata = Metadata(path, reactor)
        repair = arguments.command == "verify" and arguments.repair
        try:
            rebuilt = await metadata.open(rebuild=repair)
        except MetadataCorrupt as e:
            _say(f"{e}; 'ocicache verify --repair', or starting the daemon, moves it aside and creates a new one")
            raise SystemExit(2) from None
        except MetadataUnavailable as e:
            _say(str(e))
            raise SystemExit(2) from None
        if rebuilt is not None:
            print(f"repaired: the metadata database {path} was corrupt ({rebuilt.reason}); moved it to"
                  f" {rebuilt.moved_to} and created a new one (the daemon adopts the stored files again)")
        try:
            code = await run(reactor, config, metadata, arguments)
        except MetadataUnavailable as e:
            _say(str(e))
            code = 2
        finally:
            await metadata.close()
        # A corrupt database was something wrong, even once repaired.
        raise SystemExit(1 if rebuilt is not None and code == 0 else code)

    react(lambda reactor: Deferred.fromCoroutine(body(reactor)))
    return 1  # not reached: react exits


def _say(line: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"ocicache: {line}\n")
    sys.stderr.flush()


def _exit_on_signals() -> None:
    """
    SIGINT and SIGTERM end the command now, with status 128 + the signal:
    not a graceful reactor stop, which would wait for the database thread
    (busy on a lock, say).  Everything here is safe to cut: files are
    committed by rename, and SQLite survives a process that ends in the
    middle of a transaction.
    """

    def exit_now(signum: int, frame: FrameType | None) -> None:
        try:
            sys.stdout.flush()
        except (OSError, RuntimeError, ValueError):
            pass  # interrupted mid-write, or already closed
        os.write(2, f"ocicache: stopped by {signal.Signals(signum).name}\n".encode())
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, exit_now)


class _Progress:
    """
    A progress bar on a terminal; a plain line every tenth otherwise.
    """

    def __init__(self, total: int, stream: TextIO) -> None:
        self._total = max(total, 1)
        self._stream = stream
        self._tty = stream.isatty()
        self._done = 0
        self._last_tenth = -1

    def step(self) -> None:
        self._done += 1
        if self._tty:
            width = 40
            filled = width * self._done // self._total
            self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self._done}/{self._total}")
            if self._done == self._total:
                self._stream.write("\n")
        else:
            tenth = 10 * self._done // self._total
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self._stream.write(f"verify: {self._done}/{self._total} checked\n")
        self._stream.flush()

    def say(self, line: str) -> None:
        if self._tty:
            self._stream.write("\r\033[K")
        self._stream.write(line + "\n")
        self._stream.flush()


async def _verify(reactor: Reactor, config: Config, metadata: Metadata, arguments: argparse.Namespace) -> int:
    store = Store(config.cache.dir)
    # Only what a digest names can be checked by its name: the files of
    # other kinds are named by what identifies them (their request, their
    # remote and path) and were checked before they were kept.
    files = [(kind, digest, path) for kind in (Kind.BLOB, Kind.MANIFEST) for digest, path, _ in store.walk(kind)]
    progress = _Progress(len(files), sys.stdout)
    corrupt: list[tuple[Kind, Digest]] = []
    for kind, digest, path in files:
        if os.path.exists(path) and not verify_file(path, digest):
            corrupt.append((kind, digest))
            progress.say(f"CORRUPT {kind.value}/{digest}")
        progress.step()
    # Rows that promise a file which is not there.
    on_disk = {(kind, str(digest)) for kind, digest, _ in files}
    missing = [
        (Kind.BLOB, Digest.parse(row.digest)) for row in await metadata.blobs()
        if (Kind.BLOB, row.digest) not in on_disk and store.size(Kind.BLOB, Digest.parse(row.digest)) is None
    ] + [
        (Kind.MANIFEST, Digest.parse(digest)) for digest in await metadata.manifest_digests()
        if (Kind.MANIFEST, digest) not in on_disk and store.size(Kind.MANIFEST, Digest.parse(digest)) is None
    ]
    for kind, digest in missing:
        progress.say(f"MISSING {kind.value}/{digest}")
    bad = corrupt + missing
    if arguments.repair and bad:
        for kind, digest in bad:
            store.remove(kind, digest)
        await metadata.forget(Kind.BLOB.value, [str(d) for k, d in bad if k is Kind.BLOB])
        await metadata.forget(Kind.MANIFEST.value, [str(d) for k, d in bad if k is Kind.MANIFEST])
        print(f"repaired: removed {len(bad)} bad entries; they will be fetched again when asked for")
    print(f"verified {len(files)} files: {len(corrupt)} corrupt, {len(missing)} missing")
    return 1 if bad else 0


async def _gc(reactor: Reactor, config: Config, metadata: Metadata, arguments: argparse.Namespace) -> int:
    from twisted.python.threadpool import ThreadPool

    store = Store(config.cache.dir)
    pool = ThreadPool(minthreads=0, maxthreads=2, name="ocicache-gc")
    pool.start()
    try:
        disk = Disk(reactor, store, metadata, pool)
        async def protected() -> list[Digest]:
            # As the daemon protects: pins, and manifests read within
            # protect_recent (as far as the database knows).
            window = config.cache.protect_recent
            since = time.time() - window if window > 0 else float("inf")
            return [Digest.parse(text) for text in await metadata.protected_blobs(since, [])]

        # With the S3 backend the disk holds only the local tier; the
        # bucket is kept by the running daemon's janitor.
        s3 = config.storage.s3
        budget = Budget(store.root, config.cache.max_size if s3 is None else s3.local_max_size,
                        config.cache.min_free)
        capacity = Capacity(budget, disk, protected=protected)
        await _other_kinds(budget, disk)
        janitor = Janitor(disk, capacity, config.cache.blob_ttl, manifest_ttl=config.cache.manifest_ttl)
        recovered = await janitor.recover()
        report = await janitor.run()
    finally:
        pool.stop()
    print(f"expired: {report.expired} blobs, {human_size(report.expired_bytes)}")
    print(f"evicted: {report.evicted} entries (blobs, git, files), {human_size(report.evicted_bytes)}")
    print(f"removed: {report.temp_removed} abandoned temp files, {report.tags_removed} old tag rows, "
          f"{recovered.dropped_rows} rows without files, {recovered.removed_unverified} unverifiable files, "
          f"{report.manifests_removed} unreferenced manifests")
    print(f"freed: {human_size(report.expired_bytes + report.evicted_bytes)}; "
          f"the store now holds {human_size(budget.size)} in its budget")
    return 0


async def _other_kinds(budget: Budget, disk: Disk) -> None:
    """
    The git responses and mirrors, and the files, in the budget as their
    tables count them, so that C{gc} evicts among every kind as the daemon
    does (their rows are reconciled with the store by the daemon).
    """
    git = Capacity(budget, disk, table=GIT_TABLE, kind=Kind.GIT, remove=partial(remove_entries, disk))
    rows = sorted(await disk.metadata.blobs(GIT_TABLE), key=lambda row: row.last_access)
    git.load((Digest.parse(row.digest), row.size, row.hits > 1) for row in rows)
    files = Capacity(budget, disk, table=FILES_TABLE, kind=Kind.FILES)
    rows = sorted(await disk.metadata.blobs(FILES_TABLE), key=lambda row: row.last_access)
    files.load((FileKey.parse(row.digest), row.size, row.hits > 1)  # type: ignore[misc]  # keyed by any hashable
               for row in rows)


async def _stats(reactor: Reactor, config: Config, metadata: Metadata, arguments: argparse.Namespace) -> int:
    store = Store(config.cache.dir)
    sizes = {kind: [size for _, _, size in store.walk(kind)] for kind in Kind}
    # Git responses and mirrors, as their table counts them (a mirror is a directory).
    sizes[Kind.GIT] = [row.size for row in await metadata.blobs("git_entries")]
    summary = await metadata.summary()
    quota = await metadata.quota()
    files = await _files_stats(config, metadata)
    now = time.time()
    oldest = summary["oldest"]
    # One budget bounds the blobs, git and files on the disk (with the S3
    # backend, the local tier's); manifests are not counted in it.
    s3 = config.storage.s3
    limit_bytes = config.cache.max_size if s3 is None else s3.local_max_size
    counted = {"blob": sum(sizes[Kind.BLOB]), "git": sum(sizes[Kind.GIT]), "files": files["bytes"]}
    result = {
        "dir": store.root,
        "size_bytes": sum(sizes[Kind.BLOB]) + sum(sizes[Kind.MANIFEST]) + sum(sizes[Kind.GIT]),
        "max_size_bytes": config.cache.max_size,
        "entries": {"blob": len(sizes[Kind.BLOB]), "manifest": len(sizes[Kind.MANIFEST]),
                    "tag": summary["tags"], "git": len(sizes[Kind.GIT])},
        "bytes": {"blob": sum(sizes[Kind.BLOB]), "manifest": sum(sizes[Kind.MANIFEST]), "git": sum(sizes[Kind.GIT])},
        "biggest_repositories": summary["repositories"],
        "oldest_entry_age_seconds": None if oldest is None else max(0.0, now - oldest),
        "upstreams": [_quota_entry(row, now) for row in quota],
        "files": files,
        "budget": {"max_size_bytes": limit_bytes, "used_bytes": sum(counted.values()), "bytes": counted},
    }
    if arguments.json:
        print(json.dumps(result, indent=2))
        return 0
    limit = f" of {human_size(limit_bytes)}" if limit_bytes is not None else ""
    print(f"cache:    {store.root}")
    print(f"size:     {human_size(result['size_bytes'])} on disk")
    print(f"budget:   {human_size(sum(counted.values()))}{limit}: blobs {human_size(counted['blob'])}, "
          f"git {human_size(counted['git'])}, files {human_size(counted['files'])} (manifests are not counted)")
    print(f"entries:  {len(sizes[Kind.BLOB])} blobs ({human_size(sum(sizes[Kind.BLOB]))}), "
          f"{len(sizes[Kind.MANIFEST])} manifests, {summary['tags']} tags")
    if sizes[Kind.GIT]:
        print(f"git:      {len(sizes[Kind.GIT])} upload-pack responses and mirrors"
              f" ({human_size(sum(sizes[Kind.GIT]))})")
    if files["remotes"]:
        print(f"files:    {files['entries']} files ({human_size(files['bytes'])}) for "
              f"{', '.join(files['remotes'])}")
    age = result["oldest_entry_age_seconds"]
    print(f"oldest:   {'-' if age is None else _age(age)}")
    print("biggest repositories:")
    for repository in summary["repositories"]:
        print(f"  {human_size(repository['bytes']):>10}  {repository['upstream']}/{repository['repo']}")
    if quota:
        print("pulls (manifest GETs, as Docker Hub counts them):")
    for row in quota:
        print(f"  {row.upstream}: {row.pulls_made} made upstream, {row.pulls_saved} saved")
        if row.remaining is not None or row.limit is not None:
            window = f" per {_age(row.window)}" if row.window is not None else ""
            source = f" for {row.source}" if row.source is not None else ""
            seen = f", {_age(max(0.0, now - row.observed_at))} ago" if row.observed_at is not None else ""
            print(f"    rate limit: {_or_dash(row.remaining)} of {_or_dash(row.limit)} left{window}{source}{seen}")
        if row.limited_until is not None and row.limited_until > now:
            print(f"    rate limited for {_age(row.limited_until - now)} more")
    return 0


async def _files_stats(config: Config, metadata: Metadata) -> dict[str, Any]:
    """The files of [[files]] remotes (L{ocicache._files}), as their table counts them."""
    rows = await metadata.blobs(FILES_TABLE)
    return {
        "remotes": [remote.name for remote in config.files.remotes] if config.files is not None else [],
        "entries": len(rows),
        "bytes": sum(row.size for row in rows),
    }


def _quota_entry(row: QuotaRow, now: float) -> dict[str, Any]:
    return {
        "upstream": row.upstream,
        "pulls_made": row.pulls_made,
        "pulls_saved": row.pulls_saved,
        "ratelimit": {
            "limit": row.limit,
            "remaining": row.remaining,
            "window_seconds": row.window,
            "source": row.source,
            "observed_age_seconds": None if row.observed_at is None else max(0.0, now - row.observed_at),
            "limited_for_seconds": max(0.0, row.limited_until - now) if row.limited_until is not None else 0.0,
        },
    }


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f}{unit}"
    return f"{seconds:.0f}s"
