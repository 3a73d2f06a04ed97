"""
A miss shared by the nodes of a fleet and the S3 store, for any kind of
entry named by a digest (a git response, a file; blobs have their own
step, L{ocicache._oci._blobs.FleetStep}).

Before a node asks the upstream, it claims the entry's fill lock
(L{ClaimStep}, implemented over Redis by L{ocicache._fleet}): the claim
says whether the body comes from another node instead, or whether another
node may have completed the entry in the bucket while this one waited.
Only the node that asks the upstream copies the body into the bucket, and
it lets the claim go once that copy is complete too, so that a node that
takes the claim next finds the entry there.  A node streaming from a peer
or from the bucket checks the bytes again with the entry's own verifier:
a peer is trusted to be a peer, not to be right.  A single node has
L{ALONE}: every miss asks the upstream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IResponse

from .._spec._reference import Digest
from .._storage._store import Kind, Store
from .._upstream._body import discard_body
from ._bucket_tier import BucketEntries, NotInBucket
from ._download import Download
from ._feed import Feed
from ._fills import Fills
from ._key import Key
from ._observe import observed
from ._passthrough import PassThrough
from ._replicate import Replicator
from ._sink import DiskSink
from ._source import Source, StoredFile

__all__ = ["ALONE", "PEER_IDLE", "Claim", "ClaimStep", "SharedFills", "settle_claim"]

K = TypeVar("K", bound=Key)

PEER_IDLE = 5.0
"""Seconds a peer's body may idle while it is drained, after this client was refused."""


class Claim(Protocol):
    """What the fleet decided for one miss: where its body comes from."""

    @property
    def peer(self) -> IResponse | None:
        """Another node's 200 response with the body, or C{None}: ask the upstream."""

    @property
    def shared(self) -> bool:
        """Whether the fleet coordinated this fill: another node may have completed it in the bucket meanwhile."""

    def done(self, committed: int | None) -> None:
        """This node's fill settled: committed with this size, or not (C{None})."""


class ClaimStep(Protocol):
    """The fleet's step around a miss, for one kind of entry (named by a digest)."""

    async def claim(self, digest: Digest) -> Claim: ...


class _Alone:
    """A single node: every miss asks the upstream."""

    peer = None
    shared = False

    def done(self, committed: int | None) -> None:
        pass

    async def claim(self, digest: Digest) -> Claim:
        return self


ALONE = _Alone()


async def _anyone() -> None:
    return None


class SharedFills(Generic[K]):
    """
    The misses of one kind of entry, within the fleet's claim and with
    the bucket's copy; and what this node serves the others of it.

    @param name: the L{Digest} an entry is claimed, copied and served by.
    """

    def __init__(self, sink: DiskSink[K], fills: Fills[K], store: Store, kind: Kind, reactor: IReactorTime,
                 name: Callable[[K], Digest], unname: Callable[[Digest], K], step: ClaimStep | None = None,
                 bucket: BucketEntries[K] | None = None, replicator: Replicator | None = None) -> None:
        self._sink = sink
        self._fills = fills
        self._store = store
        self._kind = kind
        self._reactor = reactor
        self._name = name
        self._unname = unname
        self._step: ClaimStep = step if step is not None else ALONE
        self._bucket = bucket
        self._replicator = replicator

    async def fill(self, key: K, source: str, ask: Callable[[], Awaitable[IResponse]],
                   on_bytes: Callable[[int], None] = lambda count: None,
                   authorize: Callable[[], Awaitable[None]] = _anyone) -> Download | PassThrough:
        """
        The sink of C{key}'s body, within its claim: the body of the node
        filling it (once C{authorize} passed), the bucket's once another
        node completed it there, or C{ask}'s (the upstream's 200 response,
        whose bytes C{on_bytes} counts; C{source} names it in the log).
        """
        claim = await self._step.claim(self._name(key))
        replicated: list[Deferred[None]] = []
        try:
            started: Download | PassThrough | None = None
            if claim.peer is not None:
                try:
                    await authorize()
                except BaseException:
                    await discard_body(claim.peer, self._reactor, PEER_IDLE)
                    raise
            elif claim.shared:
                started = await self._bucket_after_all(key, authorize)
            if started is None:
                if claim.peer is not None:
                    started = self._open(key, claim.peer, source, None, lambda count: None)
                else:
                    started = self._open(key, await ask(), source, replicated, on_bytes)
        except BaseException:
            claim.done(None)
            raise
        # The claim is let go once the object is in the bucket too: a node
        # that takes it then finds the entry there.
        done = DeferredList([observed(started.settled), *replicated])
        done.addBoth(settle_claim, claim, started)
        return started

    async def _bucket_after_all(self, key: K, authorize: Callable[[], Awaitable[None]]
                                ) -> Download | PassThrough | None:
        """The entry another node completed in the bucket while this one waited for the fill lock."""
        tier = self._bucket
        found = await tier.find(key) if tier is not None else None
        if tier is None or found is None or found.size is None:
            return None
        await authorize()
        try:
            download = await tier.stream(key, found.size)
        except NotInBucket:
            return None
        tier.bucket.capacity.accessed(self._name(key))
        return download

    def _open(self, key: K, response: IResponse, source: str, replicated: list[Deferred[None]] | None,
              on_bytes: Callable[[int], None]) -> Download | PassThrough:
        """
        The sink of C{response}'s body; only the node that asks the
        upstream copies it into the bucket (into C{replicated}).
        """
        size = response.length if isinstance(response.length, int) else None
        replicator = self._replicator if replicated is not None else None

        def replicate(download: Download) -> Deferred[None] | None:
            copied = replicator.replicate(download, self._name(key)) if replicator is not None else None
            if copied is not None and replicated is not None:
                replicated.append(copied)
            return copied

        started = self._sink.open(key, size, source, replicate)
        response.deliverBody(Feed(started, self._reactor, on_bytes))
        return started

    def peer_source(self, digest: Digest) -> Source | None:
        """
        The entry named C{digest} for another node of the fleet (the
        internal endpoint): its fill in flight here, or its stored file;
        acquired.  Access was checked on the asking node.
        """
        key = self._unname(digest)
        download = self._fills.joinable(key)
        if download is not None:
            return download.acquire()
        stored = self._store.open(self._kind, key)
        return None if stored is None else StoredFile(*stored)


def settle_claim(result: object, claim: Claim, started: Download | PassThrough) -> object:
    """
    Tell C{claim} how the fill C{started} under it ended (committed with
    its size, or not); a callback, C{result} passes through.
    """
    claim.done(started.size if isinstance(started, Download) and started.committed else None)
    return result
