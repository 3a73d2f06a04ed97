"""
Unit tests for L{ocicache._spec._host} (RFC 9110 §7.2, RFC 3986 §3.2.2)
and L{ocicache._spec._conditional} (RFC 9110 §13).
"""

from __future__ import annotations

import pytest

from ocicache._spec._conditional import not_modified
from ocicache._spec._host import is_host_field

ETAG = b'"sha256:' + b"a" * 64 + b'"'
DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize("value", [
    b"", b"registry", b"127.0.0.1", b"127.0.0.1:5000", b"a.b-c_d~e", b"[::1]", b"[::1]:443",
    b"[v1.fe80::a+en1]", b"x%41y", b"host:",
])
def test_well_formed_hosts(value: bytes) -> None:
    assert is_host_field(value)


@pytest.mark.parametrize("value", [
    b"a b@c/d", b"a b", b"user@host", b"host/path", b"[::1", b"[zz::1]", b"host:80a", b"x%4", b"h\xc3\xa9",
    b"a:1:2",
])
def test_malformed_hosts(value: bytes) -> None:
    assert not is_host_field(value)


@pytest.mark.parametrize("if_none_match", [
    [ETAG], [b"W/" + ETAG], [b"*"], [b'"other", ' + ETAG], [b'"other"', b"W/" + ETAG], [b" , " + ETAG],
])
def test_a_matching_if_none_match_is_not_modified(if_none_match: list[bytes]) -> None:
    assert not_modified(if_none_match, [], ETAG, immutable=False)


@pytest.mark.parametrize("if_none_match", [[b'"other"'], [b"garbage"], [ETAG[1:-1]], [b"W/ " + ETAG]])
def test_another_or_a_malformed_if_none_match_is_modified(if_none_match: list[bytes]) -> None:
    # And If-Modified-Since is then ignored (RFC 9110 §13.2.2).
    assert not not_modified(if_none_match, [DATE], ETAG, immutable=True)


def test_if_modified_since_holds_only_for_immutable_content_and_a_valid_date() -> None:
    assert not_modified([], [DATE], ETAG, immutable=True)
    assert not not_modified([], [DATE], ETAG, immutable=False)
    assert not not_modified([], [b"yesterday"], ETAG, immutable=True)
    assert not not_modified([], [DATE, DATE], ETAG, immutable=True)
    assert not not_modified([], [], ETAG, immutable=True)


def test_if_modified_since_compares_a_path_named_files_last_modified_date() -> None:
    """
    RFC 9110 §13.1.3: not modified when the file's Last-Modified is no
    later than the date given, whatever its text (the files' old check
    compared the strings, so a later date got the whole file again).
    """
    modified = b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert not_modified([], [modified], ETAG, immutable=False, last_modified=modified)
    assert not_modified([], [b"Mon, 07 Nov 1994 08:49:37 GMT"], ETAG, immutable=False, last_modified=modified)
    assert not not_modified([], [b"Sat, 05 Nov 1994 08:49:37 GMT"], ETAG, immutable=False, last_modified=modified)
    assert not not_modified([], [b"not a date"], ETAG, immutable=False, last_modified=modified)
    assert not not_modified([], [modified], ETAG, immutable=False, last_modified=b"garbage")
