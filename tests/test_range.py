"""
Tests for L{ocicache._spec._range.parse_range} (RFC 9110 §14).
"""

from __future__ import annotations

import pytest

from ocicache._spec._range import ByteRange, Unsatisfiable, if_range_holds, parse_range


def test_no_header() -> None:
    assert parse_range(None, 100) is None


@pytest.mark.parametrize("header, size, expected", [
    # bytes=N-: from N to the end.
    (b"bytes=0-", 100, ByteRange(0, 100)),
    (b"bytes=10-", 100, ByteRange(10, 100)),
    (b"bytes=99-", 100, ByteRange(99, 100)),
    # bytes=N-M: inclusive M, half-open end.
    (b"bytes=0-0", 100, ByteRange(0, 1)),
    (b"bytes=10-19", 100, ByteRange(10, 20)),
    (b"bytes=0-99", 100, ByteRange(0, 100)),
    (b"bytes=5-5", 100, ByteRange(5, 6)),
    # M past the end is clamped.
    (b"bytes=10-100", 100, ByteRange(10, 100)),
    (b"bytes=10-999999999999", 100, ByteRange(10, 100)),
    (b"bytes=99-1000", 100, ByteRange(99, 100)),
    # Suffix ranges: the last N bytes, all of them if N is larger.
    (b"bytes=-1", 100, ByteRange(99, 100)),
    (b"bytes=-10", 100, ByteRange(90, 100)),
    (b"bytes=-100", 100, ByteRange(0, 100)),
    (b"bytes=-1000", 100, ByteRange(0, 100)),
    # The range unit is case-insensitive (RFC 9110 §14.1).
    (b"Bytes=10-19", 100, ByteRange(10, 20)),
    (b"BYTES=-10", 100, ByteRange(90, 100)),
])
def test_single_ranges(header: bytes, size: int, expected: ByteRange) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header, size", [
    (b"bytes=100-", 100),
    (b"bytes=100-200", 100),
    (b"bytes=1000-", 100),
    (b"bytes=0-", 0),
    (b"bytes=0-10", 0),
    # A zero-length suffix selects nothing (RFC 9110 §14.1.1).
    (b"bytes=-0", 100),
    (b"bytes=-0", 0),
    # Positions past any 64-bit integer are still positions (§14.1.1 puts
    # no bound on 1*DIGIT): past the end, so 416, not a 200.
    (b"bytes=99999999999999999999-", 100),
    (b"bytes=99999999999999999999-99999999999999999999", 100),
    (b"bytes=" + b"9" * 5000 + b"-", 100),
])
def test_unsatisfiable(header: bytes, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize("header", [
    b"",
    b"bytes",
    b"bytes=",
    b"bytes=-",
    b"bytes=a-b",
    b"bytes=1-a",
    b"bytes=+1-2",
    b"bytes=-1-2",
    b"bytes=1.5-2",
    b"bytes=0x10-",
    b"items=0-10",
    b"bits=0-10",
    b"0-10",
    b"bytes 0-10",
    b"bytes=\xff-1",
    # Several ranges: §14.2 lets the server ignore the header.
    b"bytes=0-1,5-6",
    b"bytes=0-1, 5-6",
    b"bytes=0-,-5",
    b"bytes=0-1,",
    # last-pos < first-pos is invalid, so ignored (§14.1.1).
    b"bytes=20-10",
    b"bytes=1-0",
])
def test_invalid_headers_are_ignored(header: bytes) -> None:
    assert parse_range(header, 100) is None


def test_last_before_first_is_ignored_even_when_first_is_past_the_end() -> None:
    assert parse_range(b"bytes=500-400", 100) is None


def test_suffix_range_of_an_empty_representation_sends_it_whole() -> None:
    # There is no Content-Range for zero bytes ("bytes 0--1/0"): a 200 with
    # the empty body is the only correct answer.
    assert parse_range(b"bytes=-5", 0) is None


@pytest.mark.parametrize("header, size, content_range", [
    (b"bytes=0-", 100, b"bytes 0-99/100"),
    (b"bytes=10-19", 100, b"bytes 10-19/100"),
    (b"bytes=-1", 100, b"bytes 99-99/100"),
    (b"bytes=50-5000", 100, b"bytes 50-99/100"),
    (b"bytes=0-0", 1, b"bytes 0-0/1"),
])
def test_content_range(header: bytes, size: int, content_range: bytes) -> None:
    wanted = parse_range(header, size)
    assert wanted is not None
    assert wanted.content_range(size) == content_range


def test_every_range_lies_within_the_representation() -> None:
    for size in (1, 2, 7, 100):
        for first in range(0, size + 2):
            for last in range(0, size + 2):
                header = b"bytes=%d-%d" % (first, last)
                try:
                    wanted = parse_range(header, size)
                except Unsatisfiable:
                    assert first >= size
                    continue
                if last < first:
                    assert wanted is None
                    continue
                assert wanted is not None
                assert 0 <= wanted.start < wanted.end <= size
                assert wanted == ByteRange(first, min(last + 1, size))
        for suffix in range(1, size + 3):
            wanted = parse_range(b"bytes=-%d" % suffix, size)
            assert wanted is not None
            assert wanted.end == size
            assert wanted.end - wanted.start == min(suffix, size)


@pytest.mark.parametrize("header, size, expected", [
    (b"bytes=10-99999999999999999999", 100, ByteRange(10, 100)),
    (b"bytes=-99999999999999999999", 100, ByteRange(0, 100)),
    (b"bytes=00000000000000000000010-", 100, ByteRange(10, 100)),
])
def test_long_positions(header: bytes, size: int, expected: ByteRange) -> None:
    assert parse_range(header, size) == expected


ETAG = b'"sha256:' + b"a" * 64 + b'"'


@pytest.mark.parametrize("if_range, holds", [
    (None, True),
    (ETAG, True),
    (b" " + ETAG + b" ", True),
    # §13.1.5: another entity-tag, a weak one, or a date (we send no
    # Last-Modified) means "send the whole representation".
    (b'"sha256:' + b"b" * 64 + b'"', False),
    (b"W/" + ETAG, False),
    (b"Tue, 01 Dec 2026 10:00:00 GMT", False),
    (b"", False),
])
def test_if_range(if_range: bytes | None, holds: bool) -> None:
    assert if_range_holds(if_range, ETAG) is holds
