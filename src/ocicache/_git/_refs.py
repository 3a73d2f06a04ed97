"""
Ref advertisements, and the access proofs they give.

A ref request always goes to the upstream, with the client's own
credentials: refs are never served stale by default (content-cache served
stale C{ls-refs} until it stopped caching them).  Its 200 is also the
proof that these credentials may read this repository; the proof is
remembered for C{proof_ttl} under a keyed hash of the credentials and the
repository (never the credentials themselves), and a kept pack is served
only under a live proof.  Concurrent identical ref requests with the same
credentials share one upstream request.

When the upstream is down and its C{stale_refs} allows it, a ref request
is answered from the last advertisement the same credentials received,
up to C{max_stale} old: a pull during an outage still works for what the
cache holds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from .._fetch._lru import SizedLRU
from .._fetch._singleflight import SingleFlight
from ._errors import GitDenied, GitUpstreamFailed
from ._upstream import ADVERTISEMENT, RESULT, GitUpstream

__all__ = ["AccessProofs", "Advertisement", "RefService", "Who"]

MAX_REFS = 64 << 20
"""Bytes a ref advertisement may have (a monorepo's hundreds of thousands of refs fit)."""

MAX_PROOFS = 65536
"""Access proofs remembered at once; the oldest go first."""

STALE_BYTES = 256 << 20
"""Bytes of last advertisements kept for C{stale_refs}."""

PROOF_PROTOCOL = b"version=2"
"""
The proof asks for v2's capability advertisement: a few hundred bytes,
where v0's would list every ref.
"""


@frozen
class Who:
    """
    A client's claim to a repository: C{token} is a keyed hash of its
    credentials and the repository (what proofs and coalescing are keyed
    by), C{authorization} the header itself, passed to the upstream only.
    """

    upstream: str
    repo: str
    token: bytes
    authorization: bytes | None


@frozen
class Advertisement:
    """A ref advertisement's body, and whether it was served stale."""

    body: bytes
    stale: bool = False


class AccessProofs:
    """Who may read which repository, as the upstream said moments ago."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._key = os.urandom(32)
        self._until: OrderedDict[bytes, float] = OrderedDict()

    def who(self, upstream: str, repo: str, authorization: bytes | None) -> Who:
        # HMAC under a key that lives only in this process: the hash is
        # no offline oracle for the credentials.
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (upstream.encode(), repo.encode(), authorization or b"-"):
            mac.update(b"%d:" % len(part) + part)
        return Who(upstream, repo, mac.digest(), authorization)

    def holds(self, who: Who) -> bool:
        until = self._until.get(who.token)
        if until is None:
            return False
        if until <= self._clock.seconds():
            del self._until[who.token]
            return False
        return True

    def prove(self, who: Who, ttl: float) -> None:
        self._until[who.token] = self._clock.seconds() + ttl
        self._until.move_to_end(who.token)
        while len(self._until) > MAX_PROOFS:
            self._until.popitem(last=False)

    def revoke(self, who: Who) -> None:
        self._until.pop(who.token, None)


class RefService:
    """Ref requests to the upstreams, coalesced, and the proofs they give."""

    def __init__(self, clock: IReactorTime, proofs: AccessProofs) -> None:
        self._clock = clock
        self.proofs = proofs
        self._flights: SingleFlight[tuple[bytes, bytes | None, bytes], Advertisement] = SingleFlight()
        self._last: SizedLRU[tuple[bytes, bytes | None, bytes], tuple[float, bytes]] = SizedLRU(
            STALE_BYTES, lambda kept: len(kept[1]) + 200, largest=MAX_REFS)

    async def advertise(self, upstream: GitUpstream, who: Who, protocol: bytes | None) -> Advertisement:
        """
        The upstream's answer to C{info/refs} for C{who}; identical
        requests in flight share it.  Raises L{GitDenied} or
        L{GitUpstreamFailed}.
        """
        flight, _ = self._flights.call((who.token, protocol, b"info/refs"),
                                       lambda: self._ask(upstream, who, protocol, ADVERTISEMENT, None))
        return await flight

    async def ls_refs(self, upstream: GitUpstream, who: Who, protocol: bytes | None, body: bytes) -> Advertisement:
        """
        The upstream's answer to a protocol v2 C{ls-refs} request (C{body}),
        which is a ref request too: always asked, coalesced, stale only
        as C{stale_refs} allows.
        """
        request = hashlib.sha256(body).digest()
        flight, _ = self._flights.call((who.token, protocol, request),
                                       lambda: self._ask(upstream, who, protocol, RESULT, body))
        return await flight

    async def authorize(self, upstream: GitUpstream, who: Who) -> None:
        """
        Return once C{who} is proven to read its repository: a live proof,
        or a fresh one from the upstream.  The proof is never taken from a
        stale advertisement.
        """
        if self.proofs.holds(who):
            return
        advertisement = await self.advertise(upstream, who, PROOF_PROTOCOL)
        if advertisement.stale or not self.proofs.holds(who):
            raise GitUpstreamFailed(f"git upstream {upstream.name} cannot confirm access now")

    async def _ask(self, upstream: GitUpstream, who: Who, protocol: bytes | None, expected: bytes,
                   request: bytes | None) -> Advertisement:
        """
        C{info/refs} (C{request} is C{None}) or an C{ls-refs} POST, whose
        answer must be of the C{expected} content type.
        """
        config = upstream.config
        last = (who.token, protocol, hashlib.sha256(request).digest() if request is not None else b"info/refs")
        try:
            if request is None:
                response = await upstream.refs(who.repo, who.authorization, protocol)
            else:
                response = await upstream.upload_pack(who.repo, who.authorization, protocol, request)
            if response.code != 200:
                refusal = await upstream.refused(response)
                if isinstance(refusal, GitDenied):
                    self.proofs.revoke(who)
                    self._last.drop(last)
                raise refusal
            content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
            body = await upstream.read(response, MAX_REFS)
            if content_type.split(b";")[0].strip() != expected:
                raise GitUpstreamFailed(f"git upstream {upstream.name} does not speak smart HTTP for this repository")
        except GitUpstreamFailed:
            kept = self._last.get(last) if config.stale_refs else None
            if kept is None or self._clock.seconds() - kept[0] > config.max_stale:
                raise
            return Advertisement(kept[1], stale=True)
        self.proofs.prove(who, config.proof_ttl)
        if config.stale_refs:
            self._last.put(last, (self._clock.seconds(), body))
        return Advertisement(body)
