"""
Files of package repositories and file servers, the third front-end of
the fetch core: the local store, then a download in flight, walked by
L{TierWalk}; on a miss, one upstream fetch per file however many clients
ask, streamed to all of them while it arrives.

An immutable file is fetched once and kept until evicted.  A mutable file
(an C{InRelease}, a C{repomd.xml}, an C{APKINDEX.tar.gz}) is served from
the store for its remote's C{mutable_ttl}, then revalidated with one
conditional GET (RFC 9110 §13.1.1, §13.1.3) however many clients ask; a
new version replaces the old one atomically (L{ocicache._files._mutable}).
When the remote fails, a mutable file is served stale up to C{max_stale}
past its TTL (RFC 5861 §4, stale-if-error).
"""

from __future__ import annotations

import secrets
import time
from functools import partial
from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IResponse

from .._fetch._download import ABANDON_AFTER, KEEP_FRACTION, Download
from .._fetch._feed import Feed
from .._fetch._fills import Fills
from .._fetch._incoming import DownloadError
from .._fetch._negative import NegativeCache
from .._fetch._passthrough import PassThrough
from .._fetch._result import CacheResult
from .._fetch._singleflight import SingleFlight
from .._fetch._sink import DiskSink
from .._fetch._slots import Priority, Slot, Slots
from .._fetch._tiers import InFlightTier, StoreTier
from .._fetch._walk import Filling, Hit, TierWalk, Want
from .._ops._config._proxy import UNPROXIED, ProxyConfig
from .._storage._budget import Budget
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._store import Kind, Store
from .._upstream._errors import Unavailability, UpstreamUnavailable
from ._config import FilesConfig, RemoteConfig
from ._errors import FileUnknown, RemoteUnknown
from ._indexes import named_checksum
from ._key import FileKey, file_key, generation_key
from ._listed import Listed
from ._mutable import MAX_VALIDATOR, Record, Records
from ._paths import FilePath, is_mutable
from ._remote import Remote

__all__ = ["FileLookup", "FileService", "Observer"]

log = Logger()

TABLE = "file_entries"
"""The metadata table of stored files (L{ocicache._storage._metadata.BLOB_TABLES})."""


@frozen
class FileLookup:
    """What a client will be sent, and the validator of its version."""

    hit: Hit
    key: FileKey
    last_modified: str | None = None
    """The remote's C{Last-Modified} of a mutable file's version, when it sent one."""


@frozen
class _Revalidated:
    """What one revalidation decided, for every client that waited for it."""

    key: FileKey
    filling: Filling | None
    result: CacheResult
    last_modified: str | None = None


class Observer(Protocol):
    """What the service tells the metrics (L{ocicache._ops._metrics.FileMetrics})."""

    def request(self, remote: str, result: str) -> None: ...

    def upstream(self, remote: str, code: str, seconds: float) -> None: ...

    def upstream_bytes(self, remote: str, count: int) -> None: ...

    def refused(self, remote: str) -> None:
        """A body that did not match its length or its index: not kept."""

    def evicted(self, count: int, size: int) -> None: ...


class _Unobserved:
    def request(self, remote: str, result: str) -> None:
        pass

    def upstream(self, remote: str, code: str, seconds: float) -> None:
        pass

    def upstream_bytes(self, remote: str, count: int) -> None:
        pass

    def refused(self, remote: str) -> None:
        pass

    def evicted(self, count: int, size: int) -> None:
        pass


async def _no_proof() -> None:
    # A remote's files are public to every client of the mirror: the
    # remote's configuration is the access decision.
    return None


class _FileBooks:
    """The books of stored files (L{ocicache._fetch._sink.Keeper})."""

    def __init__(self, disk: Disk, capacity: Capacity) -> None:
        self._disk = disk
        self._capacity = capacity

    async def make_room(self, key: FileKey, size: int) -> bool:
        return await self._capacity.make_room(size)

    def kept(self, key: FileKey, size: int) -> None:
        self._capacity.committed(key, size)  # type: ignore[arg-type]  # typed for digests, keyed by any hashable
        self._disk.metadata.put_blob(str(key), size, time.time(), table=TABLE).addErrback(
            lambda failure: log.warn("Could not record {key}: {error}", key=str(key),
                                     error=failure.getErrorMessage()))

    def not_kept(self, key: FileKey, size: int) -> None:
        self._capacity.release(size)


class FileService:
    """Finds or fetches the files of every configured remote."""

    def __init__(self, config: FilesConfig, disk: Disk, pool: HTTPConnectionPool,
                 budget: Budget | None = None, health: DiskHealth | None = None,
                 observer: Observer | None = None, abandon_after: float = ABANDON_AFTER,
                 keep_fraction: float = KEEP_FRACTION, slots: Slots | None = None,
                 proxies: ProxyConfig = UNPROXIED, proxied_pool: HTTPConnectionPool | None = None) -> None:
        self._disk = disk
        self._reactor = disk.reactor
        self._observer: Observer = observer if observer is not None else _Unobserved()
        self.remotes = {remote.name: Remote(remote, self._reactor, pool, self._observer.upstream,
                                            proxies.routes_for(remote.proxy), proxied_pool)
                        for remote in config.remotes}
        # The files count in the store's budget with every other kind
        # (unbounded on their own when the service stands alone).
        self.capacity = Capacity(budget if budget is not None else Budget(disk.store.root, None), disk,
                                 self._observer.evicted, table=TABLE, kind=Kind.FILES)
        self._fills: Fills[FileKey] = Fills()
        self._sink = DiskSink(disk, self._fills, _FileBooks(disk, self.capacity),
                              health if health is not None else DiskHealth(), Kind.FILES,
                              abandon_after, keep_fraction)
        self._walk = TierWalk([StoreTier(disk.store, Kind.FILES, self._accessed), InFlightTier(self._fills)],
                              self._fills)
        self._slots = slots if slots is not None else Slots(32, 256)
        self._negative = {remote.name: NegativeCache(self._reactor, remote.negative_ttl, remote.negative_ttl)
                          for remote in config.remotes}
        self._records = Records(disk)
        self._revalidations: SingleFlight[tuple[str, str], _Revalidated] = SingleFlight()
        self._replacing: dict[tuple[str, str], tuple[FileKey, str | None]] = {}
        """Mutable files whose new version is being downloaded: joined, not revalidated again."""
        self.listed = Listed(disk)

    @property
    def inflight(self) -> dict[FileKey, Download]:
        """The downloads in flight, by key."""
        return self._fills.inflight

    def remote(self, name: str) -> Remote:
        remote = self.remotes.get(name)
        if remote is None:
            raise RemoteUnknown(f"no file remote is named {name!r}")
        return remote

    async def load(self) -> int:
        """
        At start-up: reconcile the metadata with the stored files, and load
        them into the eviction policy (oldest read first).  A row whose
        file is gone is dropped; a file without a row (its commit landed,
        its row did not: a crash between them) is adopted, since only
        verified bytes are ever renamed into place.  Returns how many
        files were loaded.
        """
        metadata = self._disk.metadata
        stored: dict[str, int] = await self._disk.run(_stored_files, self._disk.store)
        rows = sorted(await metadata.blobs(TABLE), key=lambda row: row.last_access)
        known = {row.digest for row in rows}
        gone = [row.digest for row in rows if row.digest not in stored]
        if gone:
            await metadata.delete_blobs(gone, table=TABLE)
        now = time.time()
        adopted = [(FileKey.parse(text), size, False) for text, size in stored.items() if text not in known]
        for key, size, _ in adopted:
            await metadata.put_blob(str(key), size, now, table=TABLE)
        kept = [(FileKey.parse(row.digest), stored[row.digest], row.hits > 1) for row in rows if row.digest in stored]
        self.capacity.load([*adopted, *kept])  # type: ignore[list-item]  # typed for digests, keyed by any hashable
        return len(adopted) + len(kept)

    # -- lookups

    async def lookup(self, name: str, path: FilePath, ranged: bool = False) -> FileLookup:
        """The bytes of C{path} on remote C{name}: stored, in flight, or fetched now."""
        remote = self.remote(name)
        if is_mutable(remote.config, path):
            found = await self._mutable(remote, path, Want(ranged))
        else:
            found = await self._immutable(remote, path, Want(ranged))
        self._observer.request(name, str(found.hit.result))
        return found

    async def size(self, name: str, path: FilePath) -> int | None:
        """The length of C{path} when it is stored or in flight with a known length, else C{None}."""
        remote = self.remote(name)
        if is_mutable(remote.config, path):
            record = await self._records.get(remote.name, path.text)
            if record is None or not self._current(remote.config, record):
                return None
            key = record.key(path.text)
        else:
            key = file_key(remote.name, path.text)
        return await self._walk.size(key, _no_proof)

    async def remote_size(self, name: str, path: FilePath) -> int | None:
        """The length the remote gives C{path} in answer to a C{HEAD} (C{None}: it gave none)."""
        remote = self.remote(name)
        self._negative[remote.name].check((remote.name, path.text))
        response = await remote.request("HEAD", path)
        await remote.discard(response)
        if response.code != 200:
            raise self._not_ok(remote, path, response.code)
        length = response.headers.getRawHeaders(b"content-length", [b""])[0]
        return int(length) if length.isdigit() and len(length) < 20 else None

    async def _immutable(self, remote: Remote, path: FilePath, want: Want) -> FileLookup:
        key = file_key(remote.name, path.text)
        hit = await self._walk.open(key, want, _no_proof, partial(self._fetch, remote, path, key))
        self._seen(remote, path, key, hit)
        return FileLookup(hit, key)

    async def _mutable(self, remote: Remote, path: FilePath, want: Want) -> FileLookup:
        name = (remote.name, path.text)
        replacing, modified = self._replacing.get(name, (None, None))
        if replacing is not None and self._fills.joinable(replacing) is not None:
            hit = await self._walk.open(replacing, want, _no_proof, partial(self._fetch, remote, path, replacing))
            return FileLookup(hit, replacing, modified)
        record = await self._records.get(*name)
        if record is not None and self._stored(record.key(path.text)) and self._current(remote.config, record):
            key = record.key(path.text)
            hit = await self._walk.open(key, want, _no_proof, partial(self._fetch, remote, path, key))
            self._seen(remote, path, key, hit)
            return FileLookup(hit, key, record.last_modified)
        waiting, joined = self._revalidations.call(name, partial(self._revalidate, remote, path, record))
        revalidated = await waiting
        if revalidated.filling is not None:
            source = revalidated.filling.acquire()
            hit = Hit(source, CacheResult.COALESCED if joined else CacheResult.MISS)
        else:
            key = revalidated.key
            hit = await self._walk.open(key, want, _no_proof, partial(self._fetch, remote, path, key))
            if hit.result is CacheResult.HIT:
                hit = Hit(hit.source, revalidated.result, hit.accessed)
        self._seen(remote, path, revalidated.key, hit)
        return FileLookup(hit, revalidated.key, revalidated.last_modified)

    def _current(self, remote: RemoteConfig, record: Record) -> bool:
        return time.time() < record.checked + remote.mutable_ttl

    def _stored(self, key: FileKey) -> bool:
        return self._fills.joinable(key) is not None or self._disk.store.size(Kind.FILES, key) is not None

    def _seen(self, remote: Remote, path: FilePath, key: FileKey, hit: Hit) -> None:
        source = hit.source
        if isinstance(source, PassThrough):
            return  # nothing kept to read
        self.listed.seen(remote.config, path.text, key, source if isinstance(source, Download) else None)

    def _accessed(self, key: FileKey) -> None:
        self.capacity.accessed(key)  # type: ignore[arg-type]  # typed for digests, keyed by any hashable

    # -- the upstream

    async def _fetch(self, remote: Remote, path: FilePath, key: FileKey) -> Filling:
        """
        The miss: GET C{path} within a download slot, and once the remote
        answers 200 start writing its body under C{key}.  A mutable file
        fetched this way becomes its current version once committed.
        """
        negative = self._negative[remote.name]
        negative.check((remote.name, path.text))
        if not is_mutable(remote.config, path):
            # What the bytes must be: asked only on a miss, so that a hit
            # never waits for an index being read.
            text = path.text
            expected = named_checksum(remote.config.kind, text) or await self.listed.expected(remote.name, text)
            key = file_key(remote.name, text, expected)
        slot = await self._slots.acquire(remote.name, Priority.BLOB)
        try:
            response = await remote.request("GET", path)
            if response.code != 200:
                await remote.discard(response)
                raise self._not_ok(remote, path, response.code)
            filling = self._fill(remote, path, key, response)
        except BaseException:
            slot.release()
            raise
        filling.settled.addBoth(_release, slot)
        if is_mutable(remote.config, path):
            filling.settled.addBoth(self._replaced, filling, remote, path, key, response, None)
        return filling

    async def _revalidate(self, remote: Remote, path: FilePath, record: Record | None) -> _Revalidated:
        """
        One conditional GET of a mutable file for every client asking now:
        C{304} renews the stored version, C{200} starts the new one, a
        failure serves the stored one stale while C{max_stale} allows.
        """
        config = remote.config
        old = record.key(path.text) if record is not None and self._stored(record.key(path.text)) else None
        if old is None:
            record = None
        self._negative[remote.name].check((remote.name, path.text))
        headers: dict[bytes, bytes] = {}
        if record is not None:
            if record.etag is not None:
                headers[b"if-none-match"] = record.etag.encode("latin-1")
            if record.last_modified is not None:
                headers[b"if-modified-since"] = record.last_modified.encode("latin-1")
        slot = await self._slots.acquire(remote.name, Priority.MANIFEST)
        try:
            asked = time.time()
            try:
                response = await remote.request("GET", path, headers)
            except UpstreamUnavailable:
                if record is not None and old is not None and asked < record.checked + config.mutable_ttl \
                        + config.max_stale:
                    log.info("{remote}/{path}: the remote failed, serving the stored version stale",
                             remote=remote.name, path=path.text)
                    return _Revalidated(old, None, CacheResult.STALE, record.last_modified)
                raise
            if response.code == 304 and record is not None and old is not None:
                await remote.discard(response)
                renewed = Record(record.encoded, record.size, asked, record.etag, record.last_modified)
                await self._records.put(remote.name, path.text, renewed)
                return _Revalidated(old, None, CacheResult.HIT, record.last_modified)
            if response.code != 200:
                await remote.discard(response)
                error = self._not_ok(remote, path, response.code)
                if isinstance(error, UpstreamUnavailable) and record is not None and old is not None \
                        and asked < record.checked + config.mutable_ttl + config.max_stale:
                    return _Revalidated(old, None, CacheResult.STALE, record.last_modified)
                raise error
            key = generation_key(remote.name, path.text, secrets.token_hex(16))
            filling = self._fill(remote, path, key, response)
        except BaseException:
            slot.release()
            raise
        filling.settled.addBoth(_release, slot)
        name = (remote.name, path.text)
        modified = _validator(response, b"last-modified")
        self._replacing[name] = (key, modified)
        filling.settled.addBoth(self._replaced_by, name, key)
        filling.settled.addBoth(self._replaced, filling, remote, path, key, response, old)
        return _Revalidated(key, filling, CacheResult.MISS, modified)

    def _fill(self, remote: Remote, path: FilePath, key: FileKey, response: IResponse) -> Filling:
        """Start writing C{response}'s body under C{key}; its length must be its C{Content-Length}."""
        size = response.length if isinstance(response.length, int) else None
        filling = self._sink.open(key, size, f"{remote.name}/{path.text}")
        filling.settled.addBoth(self._refused, filling, remote)
        response.deliverBody(Feed(filling, self._reactor, partial(self._observer.upstream_bytes, remote.name)))
        return filling

    def _not_ok(self, remote: Remote, path: FilePath, code: int) -> Exception:
        if code in (404, 410):
            missing = FileUnknown(f"{path.text} is not on {remote.name}")
            self._negative[remote.name].remember((remote.name, path.text), missing, by_digest=False)
            return missing
        if code >= 500:
            return UpstreamUnavailable(f"{remote.name} answered {code}", Unavailability.SERVER)
        return UpstreamUnavailable(f"{remote.name} answered {code}")

    def _replaced_by(self, result: object, name: tuple[str, str], key: FileKey) -> object:
        if self._replacing.get(name, (None,))[0] == key:
            del self._replacing[name]
        return result

    def _replaced(self, result: object, filling: Filling, remote: Remote, path: FilePath, key: FileKey,
                  response: IResponse, old: FileKey | None) -> object:
        """A new version of a mutable file is in the store: point its record at it, delete the old one."""
        if not isinstance(filling, Download) or not filling.committed:
            return result
        size = self._disk.store.size(Kind.FILES, key)
        record = Record(key.encoded, size if size is not None else 0, time.time(),
                        _validator(response, b"etag"), _validator(response, b"last-modified"))

        async def replace() -> None:
            await self._records.put(remote.name, path.text, record)
            if old is not None and old != key:
                await self.capacity.delete([old])  # type: ignore[list-item]  # keyed by any hashable

        Deferred.fromCoroutine(replace()).addErrback(
            lambda failure: log.warn("Could not replace {remote}/{path}: {error}", remote=remote.name,
                                     path=path.text, error=failure.getErrorMessage()))
        return result

    def _refused(self, result: object, filling: Filling, remote: Remote) -> object:
        failure = filling.failure
        if failure is not None and failure.check(DownloadError):
            self._observer.refused(remote.name)
        return result


def _validator(response: IResponse, name: bytes) -> str | None:
    value = response.headers.getRawHeaders(name, [None])[0]
    if value is None or len(value) > MAX_VALIDATOR:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _stored_files(store: Store) -> dict[str, int]:
    """Every stored file (not the records): its key as the metadata writes it, and its size.  Blocking."""
    return {str(digest): size for digest, _, size in store.walk(Kind.FILES) if digest.algorithm == "sha256"}


def _release(result: object, slot: Slot) -> object:
    slot.release()
    return result
