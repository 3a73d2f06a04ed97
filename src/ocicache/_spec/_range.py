"""
Single byte ranges, RFC 9110 §14.

containerd resumes an interrupted layer download with C{Range: bytes=N-};
that and C{bytes=N-M} and suffix ranges C{bytes=-N} are served as 206.  A
request for several ranges at once is answered with the whole blob, which
§14.2 allows ("A server MAY ignore the Range header field").
"""

from __future__ import annotations

import re

from attrs import frozen

__all__ = ["ByteRange", "Unsatisfiable", "if_range_holds", "parse_range"]

# RFC 9110 §14.1.1: int-range = first-pos "-" [ last-pos ];
# suffix-range = "-" suffix-length.  Positions are 1*DIGIT, of any length.
_SINGLE = re.compile(rb"\A\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*\Z", re.IGNORECASE)

_HUGE = 1 << 63
"""Stands in for any position of more than 18 digits: past every blob."""


def _position(digits: bytes) -> int:
    # int() of thousands of digits is slow (and refused past 4300): no
    # blob is that long, so all such numbers are equally "too far".
    significant = digits.lstrip(b"0")
    return int(significant or b"0") if len(significant) <= 18 else _HUGE


@frozen
class ByteRange:
    """C{[start, end)}: a half-open interval, unlike the header's."""

    start: int
    end: int

    def content_range(self, size: int) -> bytes:
        # RFC 9110 §14.4: Content-Range: bytes first-last/complete-length.
        return b"bytes %d-%d/%d" % (self.start, self.end - 1, size)


class Unsatisfiable(Exception):
    """RFC 9110 §15.5.17: the range does not overlap the representation."""


def parse_range(header: bytes | None, size: int) -> ByteRange | None:
    """
    The single range C{header} asks for within C{size} bytes, or C{None}
    to send the whole representation (no header, an invalid one, or
    several ranges: §14.2 says to ignore those).
    """
    if header is None:
        return None
    match = _SINGLE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        # A suffix range: the last N bytes.
        length = _position(last)
        if length == 0:
            raise Unsatisfiable()
        if size == 0:
            # §14.1.1 calls this satisfiable, but no Content-Range can
            # describe zero bytes: send the (empty) whole, as §14.2 allows.
            return None
        return ByteRange(max(0, size - length), size)
    start = _position(first)
    if last:
        end = _position(last) + 1
        if end <= start:
            return None  # §14.1.1: last-pos < first-pos is invalid: ignore.
    else:
        end = size
    if start >= size:
        raise Unsatisfiable()
    return ByteRange(start, min(end, size))


def if_range_holds(if_range: bytes | None, etag: bytes) -> bool:
    """
    Whether a Range may be honoured given C{If-Range} (RFC 9110 §13.1.5):
    with no C{If-Range}, yes; with an entity-tag, only when it matches
    C{etag} by strong comparison (§8.8.3.2: a weak tag never does); with a
    date, never, since ocicache sends no C{Last-Modified} to compare it
    with.  When it does not hold, the whole representation is sent.
    """
    if if_range is None:
        return True
    return if_range.strip() == etag and not etag.startswith(b"W/")
