"""
The internal endpoint: what one node of the fleet serves the others.

C{GET /blobs/<digest>}, with C{Authorization: Bearer <fleet secret>},
answers a download still in flight here from its temp file, growing as it
arrives (its final byte held back until the digest is verified, as for
any client), or a blob in the store; C{Range} (RFC 9110 §14) gives C{206}.
A node asking here feeds the body into its own download, which verifies
the digest again: a peer is trusted to be a peer, not to be right.

C{GET /<area>/<digest>} does the same for another kind of entry (C{git}:
an upload-pack response; C{files}: a file; each named by its key's hash),
from the front-end that keeps it (C{entries}); the asking node checks it
again with the entry's own verifier.

C{409} means "not yet": this node holds the fill lock but its upstream has
not answered; the asking node tries again.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._fetch._source import Source, StoredFile
from .._oci._blobs import BlobService
from .._spec._errors import ErrorCode, RegistryError
from .._spec._range import Unsatisfiable, parse_range
from .._spec._reference import Digest, InvalidReference
from .._storage._store import Kind, Store
from .._web._errors import render_error
from .._web._sendfile import SendfileStreamer, can_sendfile
from .._web._streamer import Streamer, WriteBudget

__all__ = ["InternalResource"]


class InternalResource(Resource):
    """
    The root of the internal listener.
    """

    isLeaf = True

    def __init__(self, blobs: BlobService, store: Store, secret: str, reactor: IReactorTime,
                 filling: Callable[[Digest, str], bool],
                 entries: Mapping[str, Callable[[Digest], Source | None]] | None = None) -> None:
        """
        @param filling: whether this node holds the fill lock of C{digest}
            in an area (its download is about to start).
        @param entries: the other areas served, each by what opens one of
            its entries (in flight or stored), acquired, or C{None}.
        """
        Resource.__init__(self)
        self._blobs = blobs
        self._store = store
        self._expected = f"Bearer {secret}".encode()
        self._reactor = reactor
        self._filling = filling
        self._budget = WriteBudget()
        self._entries = dict(entries or {})

    def render(self, request: Request) -> int | bytes:
        try:
            return self._serve(request)
        except RegistryError as error:
            return render_error(request, error)

    def _serve(self, request: Request) -> int | bytes:
        given = request.getHeader(b"authorization") or b""
        # A constant-time comparison: the secret is not guessable byte by byte.
        if not hmac.compare_digest(given, self._expected):
            raise RegistryError(ErrorCode.UNAUTHORIZED, "this endpoint is for the fleet's nodes")
        if request.method != b"GET":
            raise RegistryError(ErrorCode.UNSUPPORTED, "only GET", status=405, headers=((b"allow", b"GET"),))
        parts = request.path.split(b"/")
        area = parts[1].decode("ascii", "replace") if len(parts) == 3 else ""
        if area != "blobs" and area not in self._entries:
            raise RegistryError(ErrorCode.UNSUPPORTED, "no such endpoint", status=404)
        try:
            digest = Digest.parse(parts[2].decode("ascii"))
        except (InvalidReference, UnicodeDecodeError):
            raise RegistryError(ErrorCode.DIGEST_INVALID, "not a digest") from None
        source = self._source(digest) if area == "blobs" else self._entries[area](digest)
        if source is None:
            if self._filling(digest, area):
                raise RegistryError(ErrorCode.BLOB_UNKNOWN, "not started yet", status=409)
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"{digest} is not here")
        total = source.size
        start, end = 0, total
        if total is not None:
            try:
                wanted = parse_range(request.getHeader(b"range"), total)
            except Unsatisfiable:
                source.release()
                raise RegistryError(ErrorCode.RANGE_INVALID, "the requested range is not satisfiable",
                                    headers=((b"content-range", b"bytes */%d" % total),)) from None
            if wanted is not None:
                request.setResponseCode(206)
                request.setHeader(b"content-range", wanted.content_range(total))
                start, end = wanted.start, wanted.end
            request.setHeader(b"content-length", b"%d" % ((total if end is None else end) - start))
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"docker-content-digest", str(digest).encode("ascii"))
        # The streamer finishes the request and releases the source.
        if end is not None and can_sendfile(request, end):
            SendfileStreamer(request, source, start, end, self._reactor).start()
        else:
            Streamer(request, source, start, end, self._reactor, budget=self._budget).start()
        return NOT_DONE_YET

    def _source(self, digest: Digest) -> Source | None:
        download = self._blobs.inflight.get(digest)
        if download is not None and not download.passthrough:
            return download.acquire()
        stored = self._store.open(Kind.BLOB, digest)
        return None if stored is None else StoredFile(*stored)
