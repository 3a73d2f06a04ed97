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

Shared like blobs (L{SharedFills}): with the S3 backend every file is
copied into the bucket's C{files/} area as it arrives, appearing there
only once its length and its checksum held, and the bucket is the third
tier; in a fleet a miss takes the file's fill lock, so a node that misses
while another fills it streams it from that node (checked again here),
one upstream GET across the nodes.  A mutable file's record is shared
too (L{SharedRecords}), and its revalidation takes a fleet-wide turn (the
fill lock of its record's name): one conditional GET per TTL across the
nodes, and what one node found is fresh for all.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IResponse

from .._fetch._bucket_tier import BucketEntries
from .._fetch._claim import ALONE, PEER_IDLE, ClaimStep, SharedFills
from .._fetch._download import ABANDON_AFTER, KEEP_FRACTION, Download
from .._fetch._elsewhere import ElsewhereTier
from .._fetch._fills import Fills
from .._fetch._host_fills import HostFills
from .._fetch._incoming import DownloadError
from .._fetch._negative import NegativeCache
from .._fetch._passthrough import PassThrough
from .._fetch._replicate import Replicator
from .._fetch._result import CacheResult
from .._fetch._singleflight import SingleFlight
from .._fetch._sink import DiskSink
from .._fetch._slots import Priority, Slot, Slots
from .._fetch._source import Source
from .._fetch._tiers import InFlightTier, StoreTier
from .._fetch._walk import Filling, Hit, Tier, TierWalk, Want
from .._ops._config._proxy import UNPROXIED, ProxyConfig
from .._spec._reference import Digest
from .._storage._bucket import Bucket
from .._storage._budget import Budget
from .._storage._capacity import Capacity
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._store import Kind, Store
from .._upstream._body import discard_body
from .._upstream._errors import Unavailability, UpstreamUnavailable
from ._config import FilesConfig, RemoteConfig
from ._errors import FileUnknown, RemoteUnknown
from ._indexes import named_checksum
from ._key import FileKey, file_key, generation_key, record_key
from ._listed import Listed
from ._mutable import MAX_VALIDATOR, Record, Records, SharedRecords
from ._paths import FilePath, is_mutable
from ._remote import Remote

__all__ = ["FileLookup", "FileService", "Observer"]

log = Logger()

TABLE = "file_entries"
"""The metadata table of stored files (L{ocicache._storage._metadata.BLOB_TABLES})."""

BUCKET_AREA = "files"
"""The key prefix of files in the S3 store (C{<prefix>files/sha256/<hex>}), and their area in a fleet."""

BUCKET_TABLE = "bucket_file_entries"

CLOCK_SKEW = 5.0
"""Seconds a shared record's C{checked} may lie ahead of this node's clock and still be believed."""


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
        self._capacity.keep(key, size)  # type: ignore[arg-type]  # typed for digests, keyed by any hashable

    def not_kept(self, key: FileKey, size: int) -> None:
        self._capacity.release(size)


class FileService:
    """Finds or fetches the files of every configured remote."""

    def __init__(self, config: FilesConfig, disk: Disk, pool: HTTPConnectionPool,
                 budget: Budget | None = None, health: DiskHealth | None = None,
                 observer: Observer | None = None, abandon_after: float = ABANDON_AFTER,
                 keep_fraction: float = KEEP_FRACTION, slots: Slots | None = None,
                 proxies: ProxyConfig = UNPROXIED, proxied_pool: HTTPConnectionPool | None = None,
                 bucket: Bucket | None = None, replicator: Replicator | None = None,
                 fleet: ClaimStep | None = None, shared: SharedRecords | None = None) -> None:
        """
        @param bucket: the S3 store's area of files (L{BUCKET_AREA}), with
            the S3 backend; C{replicator} copies each file into it.
        @param fleet: the fleet's fill locks and peers for files, in a fleet;
            C{shared}, the fleet's records of mutable files.
        """
        self._disk = disk
        self._reactor = disk.reactor
        self._observer: Observer = observer if observer is not None else _Unobserved()
        self.remotes = {remote.name: Remote(remote, self._reactor, pool, self._observer.upstream,
                                            proxies.routes_for(remote.proxy), proxied_pool)
                        for remote in config.remotes}
        # The files count in the store's budget with every other kind
        # (unbounded on their own when the service stands alone).
        self.capacity = Capacity(budget if budget is not None else Budget(disk.store.root, None), disk,
                                 self._observer.evicted, table=TABLE, kind=Kind.FILES, parse=FileKey.parse)
        self._fills: Fills[FileKey] = Fills()
        self._sink = DiskSink(disk, self._fills, _FileBooks(disk, self.capacity),
                              health if health is not None else DiskHealth(), Kind.FILES,
                              abandon_after, keep_fraction)
        host: HostFills[FileKey] = HostFills(disk, Kind.FILES)
        tiers: list[Tier[FileKey]] = [StoreTier(disk.store, Kind.FILES, self._accessed), InFlightTier(self._fills),
                                      ElsewhereTier(host)]
        self.bucket = bucket
        entries = None if bucket is None else BucketEntries(bucket, self._fills, self._sink, self._reactor, _named)
        self._bucket_entries = entries
        if entries is not None:
            tiers.append(entries)
        self._walk = TierWalk(tiers, self._fills, host)
        self._step: ClaimStep = fleet if fleet is not None else ALONE
        self._shared = SharedFills(self._sink, self._fills, disk.store, Kind.FILES, self._reactor, _named,
                                   _unnamed, self._step, entries, replicator)
        self._shared_records = shared
        self._slots = slots if slots is not None else Slots(32, 256)
        # Shared with every process on the store, as the registry's are.
        self._negative = {remote.name: NegativeCache(self._reactor, remote.negative_ttl, remote.negative_ttl,
                                                     shared=disk.metadata)
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

    def peer_source(self, digest: Digest) -> Source | None:
        """The file named C{digest} for another node of the fleet (L{SharedFills.peer_source})."""
        return self._shared.peer_source(digest)

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
        await self._negative[remote.name].check((remote.name, path.text))
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
        if record is not None and self._current(remote.config, record) and await self._stored(record.key(path.text)):
            key = record.key(path.text)
            hit = await self._walk.open(key, want, _no_proof, partial(self._fetch, remote, path, key))
            self._seen(remote, path, key, hit)
            return FileLookup(hit, key, record.last_modified)
        shared = await self._shared_record(remote, path)
        if shared is not None:
            await self._adopt(remote, path, record, shared)
            key = shared.key(path.text)
            hit = await self._walk.open(key, want, _no_proof, partial(self._fetch, remote, path, key))
            self._seen(remote, path, key, hit)
            return FileLookup(hit, key, shared.last_modified)
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

    async def _shared_record(self, remote: Remote, path: FilePath) -> Record | None:
        """The fleet's record of C{path}, if a node fetched or confirmed it within the remote's C{mutable_ttl}."""
        if self._shared_records is None:
            return None
        shared = await self._shared_records.get(remote.name, path.text)
        if shared is None or not self._current(remote.config, shared) or shared.checked > time.time() + CLOCK_SKEW:
            return None
        return shared

    async def _adopt(self, remote: Remote, path: FilePath, record: Record | None, shared: Record) -> None:
        """The fleet's record of C{path} is this node's too; the version it replaces is deleted here."""
        if record == shared:
            return
        await self._records.put(remote.name, path.text, shared)
        if record is not None and record.encoded != shared.encoded:
            await self.capacity.delete([record.key(path.text)])  # type: ignore[list-item]  # keyed by any hashable

    def _share(self, remote: Remote, path: FilePath, record: Record) -> None:
        """Tell the fleet what the remote just said of C{path}, for its C{mutable_ttl}."""
        if self._shared_records is not None:
            self._shared_records.put(remote.name, path.text, record, remote.config.mutable_ttl)

    async def _stored(self, key: FileKey) -> bool:
        """Whether C{key} is on this node's disk, being filled, or in the bucket (its versions are shared there)."""
        if self._fills.joinable(key) is not None or self._disk.store.size(Kind.FILES, key) is not None:
            return True
        return self._bucket_entries is not None and await self._bucket_entries.find(key) is not None

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
        await negative.check((remote.name, path.text))
        if not is_mutable(remote.config, path):
            # What the bytes must be: asked only on a miss, so that a hit
            # never waits for an index being read.
            text = path.text
            expected = named_checksum(remote.config.kind, text) or await self.listed.expected(remote.name, text)
            key = file_key(remote.name, text, expected)
        asked: list[IResponse] = []

        async def ask() -> IResponse:
            response = await remote.request("GET", path)
            if response.code != 200:
                await remote.discard(response)
                raise self._not_ok(remote, path, response.code)
            asked.append(response)
            return response

        slot = await self._slots.acquire(remote.name, Priority.BLOB)
        try:
            filling = await self._fill(remote, path, key, ask)
        except BaseException:
            slot.release()
            raise
        filling.settled.addBoth(_release, slot)
        if is_mutable(remote.config, path) and asked:
            # Fetched from the remote (not from a peer or the bucket): its validators are the record's.
            filling.settled.addBoth(self._replaced, filling, remote, path, key, asked[0], None)
        return filling

    async def _revalidate(self, remote: Remote, path: FilePath, record: Record | None) -> _Revalidated:
        """
        The revalidation of a mutable file, within the fleet's turn: what
        another node found while this one waited, or this node's own
        conditional GET.  The turn ends once the answer is shared: a new
        version as soon as its download starts, so that the other nodes
        stream it from this one (its fill lock) while it arrives.
        """
        turn = await self._step.claim(_record_name(remote, path))
        try:
            if turn.peer is not None:  # a record is never served by a peer: not ours to read
                await discard_body(turn.peer, self._reactor, PEER_IDLE)
            shared = await self._shared_record(remote, path)
            if shared is not None:
                await self._adopt(remote, path, record, shared)
                revalidated = _Revalidated(shared.key(path.text), None, CacheResult.HIT, shared.last_modified)
            else:
                revalidated = await self._conditional(remote, path, record)
        finally:
            turn.done(None)
        return revalidated

    async def _conditional(self, remote: Remote, path: FilePath, record: Record | None) -> _Revalidated:
        """
        One conditional GET of a mutable file for every client asking now:
        C{304} renews the stored version, C{200} starts the new one, a
        failure serves the stored one stale while C{max_stale} allows.
        """
        config = remote.config
        old = record.key(path.text) if record is not None and await self._stored(record.key(path.text)) else None
        if old is None:
            record = None
        await self._negative[remote.name].check((remote.name, path.text))
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
                self._share(remote, path, renewed)
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

            async def ask() -> IResponse:
                return response

            # A new key no other node knows: the fill lock makes this node
            # its holder, so that the others stream it from here.
            filling = await self._fill(remote, path, key, ask)
        except BaseException:
            slot.release()
            raise
        filling.settled.addBoth(_release, slot)
        name = (remote.name, path.text)
        modified = _validator(response, b"last-modified")
        self._share(remote, path, Record(key.encoded, filling.size or 0, asked, _validator(response, b"etag"),
                                         modified))
        self._replacing[name] = (key, modified)
        filling.settled.addBoth(self._replaced_by, name, key)
        filling.settled.addBoth(self._replaced, filling, remote, path, key, response, old)
        return _Revalidated(key, filling, CacheResult.MISS, modified)

    async def _fill(self, remote: Remote, path: FilePath, key: FileKey,
                    ask: Callable[[], Awaitable[IResponse]]) -> Filling:
        """
        Write C{key}'s body, from a peer, the bucket or C{ask}'s response
        (L{SharedFills}); its length must be its C{Content-Length}.
        """
        filling = await self._shared.fill(key, f"{remote.name}/{path.text}", ask,
                                          partial(self._observer.upstream_bytes, remote.name))
        filling.settled.addBoth(self._refused, filling, remote)
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
        """
        A new version of a mutable file is whole: point its record at it,
        delete the old one.  Kept on this disk, or only in the bucket (the
        S3 backend without room on the local disk): L{_stored} says later
        whether it can still be found.
        """
        if isinstance(result, Failure) or not isinstance(filling, Download) or filling.passthrough:
            return result
        if not filling.committed and self.bucket is None:
            return result  # kept nowhere: the next request asks the remote again
        size = self._disk.store.size(Kind.FILES, key)
        record = Record(key.encoded, size if size is not None else filling.size or 0, time.time(),
                        _validator(response, b"etag"), _validator(response, b"last-modified"))
        self._share(remote, path, record)

        async def replace() -> None:
            await self._records.put(remote.name, path.text, record)
            if old is not None and old != key:
                await self.capacity.delete([old])  # type: ignore[list-item]  # keyed by any hashable
                if self.bucket is not None:
                    await self.bucket.capacity.delete([_named(old)])

        Deferred.fromCoroutine(replace()).addErrback(
            lambda failure: log.warn("Could not replace {remote}/{path}: {error}", remote=remote.name,
                                     path=path.text, error=failure.getErrorMessage()))
        return result

    def _refused(self, result: object, filling: Filling, remote: Remote) -> object:
        failure = filling.failure
        if failure is not None and failure.check(DownloadError):
            self._observer.refused(remote.name)
        return result


def _named(key: FileKey) -> Digest:
    """What a file is called in the bucket and in the fleet: its key's hash as a digest."""
    return Digest(key.algorithm, key.encoded)


def _unnamed(digest: Digest) -> FileKey:
    return FileKey(digest.algorithm, digest.encoded)


def _record_name(remote: Remote, path: FilePath) -> Digest:
    """The name of C{path}'s revalidation turn in the fleet: its record's key (apart from every file's)."""
    return Digest("sha256", record_key(remote.name, path.text).encoded)


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
