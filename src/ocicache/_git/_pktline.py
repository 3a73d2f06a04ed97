"""
git's pkt-line framing (gitprotocol-common(5)): what ocicache reads of an
upload-pack request, and the check an upload-pack response must pass
before it is kept.

A pkt-line is four hex digits of length (the four included) and a
payload; C{0000} is a flush, C{0001} a delimiter and C{0002} a
response-end (protocol v2).  A response carries its pack in side-band
packets (gitprotocol-pack(5), "side-band, side-band-64k"): band 1 the pack
bytes, band 2 progress, band 3 an error.  A pack ends with the SHA-1 of
everything before it (gitformat-pack(5)).
"""

from __future__ import annotations

import hashlib
import re

from attrs import frozen

from ._errors import BadGitRequest

__all__ = ["PackResponseCheck", "UploadRequest", "parse_upload_request"]

MAX_PKT = 65520
"""The largest pkt-line, its length included (gitprotocol-common(5), LARGE_PACKET_MAX)."""

_HEX = frozenset(b"0123456789abcdef")
_OID = re.compile(rb"[0-9a-f]{40}|[0-9a-f]{64}")
"""An object id: SHA-1 or SHA-256, lowercase hex."""


@frozen
class UploadRequest:
    """
    What ocicache needs to know of an upload-pack request body.

    @ivar command: the v2 command (C{fetch}, C{ls-refs}, ...), or C{None}
        for protocol v0/v1, where every request is a fetch.
    @ivar done: whether the client ended negotiation (C{done}): only then
        does the response carry a pack, and only then is it kept.
    """

    command: str | None
    done: bool
    wants: tuple[str, ...] = ()
    """The object ids the client wants (C{want <oid>}), lowercase hex."""
    want_refs: bool = False
    """Whether it wants refs by name (v2 C{want-ref}): a mirror cannot tell what those are."""

    @property
    def cacheable(self) -> bool:
        return self.command in (None, "fetch") and self.done


def parse_upload_request(body: bytes, v2: bool) -> UploadRequest:
    """
    Check C{body}'s pkt-line framing, and read its command and whether it
    says C{done}.  Raises L{BadGitRequest} for anything malformed.
    """
    command: str | None = None
    done = False
    first = True
    wants: list[str] = []
    want_refs = False
    for kind, payload in _packets(body):
        if kind != "data":
            continue
        line = payload.rstrip(b"\n")
        if v2 and first:
            if not line.startswith(b"command="):
                raise BadGitRequest("a protocol v2 request starts with command=")
            command = line[len(b"command="):].decode("ascii", "replace")
        first = False
        if line == b"done":
            done = True
        elif line.startswith(b"want "):
            oid = line[5:].split(b" ", 1)[0]
            if _OID.fullmatch(oid) is None:
                raise BadGitRequest("a want names an object id in hex")
            wants.append(oid.decode("ascii"))
        elif line.startswith(b"want-ref "):
            want_refs = True
    if v2 and command is None:
        raise BadGitRequest("a protocol v2 request starts with command=")
    return UploadRequest(command, done, tuple(wants), want_refs)


def _packets(body: bytes) -> list[tuple[str, bytes]]:
    packets: list[tuple[str, bytes]] = []
    offset = 0
    while offset < len(body):
        head = body[offset:offset + 4]
        if len(head) < 4 or not set(head) <= _HEX:
            raise BadGitRequest("the request body is not pkt-line framed")
        length = int(head, 16)
        if length in (0, 1, 2):
            packets.append(({0: "flush", 1: "delim", 2: "end"}[length], b""))
            offset += 4
            continue
        if length < 4 or length > MAX_PKT or offset + length > len(body):
            raise BadGitRequest("the request body has a bad pkt-line length")
        packets.append(("data", body[offset + 4:offset + length]))
        offset += length
    return packets


class PackResponseCheck:
    """
    The L{ocicache._fetch._key.Verifier} of an upload-pack response: fed
    its bytes in order (in the disk thread), it parses the pkt-lines as
    they come, hashes the pack carried in side-band 1, and at the end says
    whether the framing is complete (the flush after the pack) and the
    pack's trailing SHA-1 matches.  Protocol v0/v1 (C{NAK}/C{ACK} then the
    side-band) and v2 (sections, then C{packfile} and the side-band) are
    both read: a packet whose first byte is a band number (1, 2, 3) starts
    the side-band, which no text line of either protocol can.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._problem: str | None = None
        self._in_sideband = False
        self._ended = False
        self._pack_length = 0
        self._pack_head = bytearray()
        self._sha = hashlib.sha1(usedforsecurity=False)
        self._tail = bytearray()
        """The last 20 pack bytes seen: the trailer, once the pack ends."""

    def update(self, data: bytes) -> None:
        if self._problem is not None:
            return
        self._buffer += data
        offset = 0
        buffer = self._buffer
        while self._problem is None and len(buffer) - offset >= 4:
            head = bytes(buffer[offset:offset + 4])
            if not set(head) <= _HEX:
                self._problem = "the upstream's response is not pkt-line framed"
                break
            length = int(head, 16)
            if length < 4:
                self._control(length)
                offset += 4
                continue
            if length > MAX_PKT:
                self._problem = "the upstream's response has a pkt-line longer than git allows"
                break
            if len(buffer) - offset < length:
                break
            self._packet(memoryview(buffer)[offset + 4:offset + length])
            offset += length
        del buffer[:offset]

    def _control(self, length: int) -> None:
        if self._ended:
            self._problem = "the upstream's response goes on after its end"
        elif self._in_sideband and length == 0:
            self._ended = True
        elif self._in_sideband:
            self._problem = "the upstream's response has a delimiter inside its pack"

    def _packet(self, payload: memoryview) -> None:
        if self._ended:
            self._problem = "the upstream's response goes on after its end"
            return
        band = payload[0] if len(payload) else 0
        if band in (1, 2, 3):
            self._in_sideband = True
            if band == 1:
                self._pack(payload[1:])
            elif band == 3:
                message = bytes(payload[1:200]).decode("utf-8", "replace").strip()
                self._problem = f"the upstream failed: {message}"
        elif self._in_sideband:
            self._problem = "the upstream's response left its side-band before its end"
        elif bytes(payload[:4]) == b"ERR ":
            message = bytes(payload[4:200]).decode("utf-8", "replace").strip()
            self._problem = f"the upstream failed: {message}"

    def _pack(self, data: memoryview) -> None:
        if len(self._pack_head) < 4:
            self._pack_head += data[:4 - len(self._pack_head)]
        self._pack_length += len(data)
        # Everything but the last 20 bytes is hashed; they may be the trailer.
        tail = self._tail
        tail += data
        if len(tail) > 20:
            cut = len(tail) - 20
            self._sha.update(tail[:cut])
            del tail[:cut]

    def mismatch(self) -> str | None:
        if self._problem is not None:
            return self._problem
        if self._buffer or not self._ended:
            return "the upstream's response was cut short"
        if self._pack_length < 32 or bytes(self._pack_head) != b"PACK":
            return "the upstream's response carries no pack"
        if self._sha.digest() != bytes(self._tail):
            return "the pack's trailing SHA-1 does not match its bytes"
        return None
