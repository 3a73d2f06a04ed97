"""
Upload-pack requests, the git front-end of the fetch core.

A request whose response carries a pack (v0/v1, or v2 C{fetch}, that
says C{done}) is an entry named by L{ResponseKey}: the local store, then a
response in flight, then (with the S3 backend) the bucket's C{git/} area,
walked by L{TierWalk}; on a miss one upstream request however many
clients ask, its body streamed to all of them as it arrives and committed
only once L{PackResponseCheck} passes.  With the S3 backend it is copied
into the bucket as it arrives, and the object appears only once the check
passed (L{Replicator}); one read back from the bucket is checked again on
its way.  In a fleet, a miss takes the entry's fill lock first
(L{ClaimStep}, L{SharedFills}): a node that misses while another fills the same response
streams it from that node (checked again here), or, once it is complete,
from the bucket; one upstream request across the nodes.  A kept response
is served only to a client with a live access proof
(L{RefService.authorize}).

Everything else (v2 C{ls-refs}, a negotiation round without C{done}) goes
to the upstream every time and passes through memory, kept nowhere.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from .._fetch._bucket_tier import BucketEntries
from .._fetch._claim import ClaimStep, SharedFills
from .._fetch._download import Download
from .._fetch._elsewhere import ElsewhereTier
from .._fetch._feed import Feed
from .._fetch._fills import Fills
from .._fetch._host_fills import HostFills
from .._fetch._passthrough import PassThrough
from .._fetch._replicate import Replicator
from .._fetch._result import CacheResult
from .._fetch._sink import DiskSink
from .._fetch._slots import Priority, Slot, Slots
from .._fetch._source import Source
from .._fetch._tiers import InFlightTier, StoreTier
from .._fetch._walk import Tier, TierWalk, Want
from .._spec._reference import Digest
from .._storage._bucket import Bucket
from .._storage._disk import Disk
from .._storage._health import DiskHealth
from .._storage._store import Kind
from ._books import GitBooks
from ._errors import GitUpstreamFailed
from ._key import ResponseKey, Unchecked
from ._mirror import Mirrors
from ._pktline import parse_upload_request
from ._refs import RefService, Who
from ._result import GitResult
from ._upstream import RESULT, GitUpstream

__all__ = ["PackAnswer", "PackService"]

log = Logger()

_RESULTS = {CacheResult.HIT: GitResult.HIT, CacheResult.MISS: GitResult.MISS,
            CacheResult.COALESCED: GitResult.COALESCED}


@frozen
class PackAnswer:
    """
    What a client is sent: the response bytes, how they were found, and
    the entry's key (C{None}: passed through, not an entry).
    """

    source: Source
    result: GitResult
    key: ResponseKey | None = None


class PackService:
    """Finds, fetches and keeps upload-pack responses."""

    def __init__(self, disk: Disk, books: GitBooks, refs: RefService, slots: Slots, health: DiskHealth,
                 on_upstream_bytes: Callable[[str, int], None] = lambda upstream, count: None,
                 mirrors: Mirrors | None = None, bucket: Bucket | None = None,
                 replicator: Replicator | None = None, fleet: ClaimStep | None = None) -> None:
        """
        @param mirrors: the bare mirrors that answer the requests to
            C{mode = "mirror"} upstreams.
        @param bucket: the S3 store's area of git responses, with the S3
            backend; C{replicator} copies each upstream response into it.
        @param fleet: the fleet's fill locks and peers, in a fleet.
        """
        self._disk = disk
        self._mirrors = mirrors
        self._reactor: IReactorTime = disk.reactor
        self._books = books
        self._refs = refs
        self._slots = slots
        self._on_upstream_bytes = on_upstream_bytes
        self._fills: Fills[ResponseKey] = Fills()
        self._sink = DiskSink(disk, self._fills, books, health, Kind.GIT)
        host: HostFills[ResponseKey] = HostFills(disk, Kind.GIT)
        tiers: list[Tier[ResponseKey]] = [StoreTier(disk.store, Kind.GIT, books.accessed), InFlightTier(self._fills),
                                          ElsewhereTier(host)]
        entries = None if bucket is None else BucketEntries(bucket, self._fills, self._sink, self._reactor, _stored_as)
        if entries is not None:
            tiers.append(entries)
        self._walk = TierWalk(tiers, self._fills, host)
        self._shared = SharedFills(self._sink, self._fills, disk.store, Kind.GIT, self._reactor, _stored_as,
                                   ResponseKey.from_digest, fleet, entries, replicator)

    @property
    def inflight(self) -> dict[ResponseKey, Download]:
        return self._fills.inflight

    async def upload_pack(self, upstream: GitUpstream, who: Who, protocol: bytes | None, body: bytes) -> PackAnswer:
        """
        The answer to one C{git-upload-pack} POST with the (decompressed)
        C{body}.  Raises L{BadGitRequest} for a malformed body, and the
        upstream's refusal or failure.
        """
        request = parse_upload_request(body, protocol is not None and b"version=2" in protocol)
        if request.command == "ls-refs":
            refs = await self._refs.ls_refs(upstream, who, protocol, body)
            return PackAnswer(_in_memory(refs.body), GitResult.STALE if refs.stale else GitResult.PASSTHROUGH)
        if (self._mirrors is not None and upstream.config.mode == "mirror" and request.command in (None, "fetch")
                and request.wants and not request.want_refs):
            # Only for a client the upstream lets read the repository: the
            # mirror was fetched with the configured credentials, not its own.
            await self._refs.authorize(upstream, who)
            path = await self._mirrors.ready(upstream, who.repo, request.wants)
            if path is not None:
                return PackAnswer(self._mirrors.serve(path, protocol, body, request.done), GitResult.MIRROR)
        if not request.cacheable:
            return PackAnswer(await self._pass(upstream, who, protocol, body), GitResult.PASSTHROUGH)
        key = ResponseKey.of(upstream.name, who.repo, (protocol or b"").decode("ascii", "replace"), body)
        hit = await self._walk.open(key, Want(), partial(self._refs.authorize, upstream, who),
                                    partial(self._fill, upstream, who, protocol, body, key))
        return PackAnswer(hit.source, _RESULTS.get(hit.result, GitResult.MISS), key)

    def corrupt(self, key: ResponseKey) -> None:
        """
        A kept response did not pass its check as it was read: out of the
        store, so that the next client fetches it again.
        """
        log.warn("{key} no longer matches its bytes on disk: removed", key=str(key))
        removing = Deferred.fromCoroutine(self._books.capacity.delete([key.digest]))
        removing.addErrback(lambda failure: log.failure("Could not remove {key}", failure, key=str(key)))

    async def _post(self, upstream: GitUpstream, who: Who, protocol: bytes | None, body: bytes) -> IResponse:
        response = await upstream.upload_pack(who.repo, who.authorization, protocol, body)
        if response.code != 200:
            raise await upstream.refused(response)
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if content_type.split(b";")[0].strip() != RESULT:
            await upstream.refused(response)
            raise GitUpstreamFailed(f"git upstream {upstream.name} sent no upload-pack result")
        # The upstream let these credentials read the repository.
        self._refs.proofs.prove(who, upstream.config.proof_ttl)
        return response

    def peer_source(self, digest: Digest) -> Source | None:
        """The entry named C{digest} for another node of the fleet (L{SharedFills.peer_source})."""
        return self._shared.peer_source(digest)

    async def _fill(self, upstream: GitUpstream, who: Who, protocol: bytes | None, body: bytes,
                    key: ResponseKey) -> Download | PassThrough:
        """
        The fill, within the fleet's claim (L{SharedFills}): the body of
        the node filling it (after this client's access is checked), the
        bucket's once another node completed it there, or the upstream's.
        """
        slot = await self._slots.acquire(upstream.name, Priority.BLOB)
        try:
            started = await self._shared.fill(
                key, f"{upstream.name}/{who.repo}", partial(self._post, upstream, who, protocol, body),
                partial(self._on_upstream_bytes, upstream.name), partial(self._refs.authorize, upstream, who))
        except BaseException:
            slot.release()
            raise
        started.settled.addBoth(_release, slot)
        return started

    async def _pass(self, upstream: GitUpstream, who: Who, protocol: bytes | None, body: bytes) -> PassThrough:
        response = await self._post(upstream, who, protocol, body)
        key = ResponseKey.of(upstream.name, who.repo, "", body)
        size = response.length if isinstance(response.length, int) else None
        passing = PassThrough(key, size, verifier=Unchecked()).acquire()
        passing.settled.addErrback(lambda failure: log.info(
            "Upload-pack pass-through from {upstream} failed: {error}", upstream=upstream.name,
            error=failure.getErrorMessage()))
        response.deliverBody(Feed(passing, self._reactor, partial(self._on_upstream_bytes, upstream.name)))
        return passing


def _in_memory(body: bytes) -> PassThrough:
    """A whole body already read, as a source the streamers read."""
    source = PassThrough(ResponseKey.of("", "", "", body), len(body), verifier=Unchecked()).acquire()
    source.write(body)
    source.finish()
    return source


def _stored_as(key: ResponseKey) -> Digest:
    return key.digest


def _release(result: object, slot: Slot) -> object:
    slot.release()
    return result
