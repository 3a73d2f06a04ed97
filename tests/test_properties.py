"""
Property tests (hypothesis) for the pure parts that take untrusted input:
whatever a client or an upstream sends, the parsers answer within their
contract and never raise what they do not document.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ocicache._oci._manifests import variant_key
from ocicache._spec._auth import parse_www_authenticate
from ocicache._spec._media_types import MANIFEST_MEDIA_TYPES
from ocicache._spec._range import Unsatisfiable, parse_range


@given(st.one_of(st.binary(max_size=64),
                 st.builds(lambda a, b: b"bytes=%s-%s" % (a, b),
                           st.sampled_from([b"", b"0", b"1", b"7", b"99", b"99999999999999999999"]),
                           st.sampled_from([b"", b"0", b"5", b"98", b"99999999999999999999"]))),
       st.integers(min_value=0, max_value=1 << 40))
def test_a_range_lies_within_the_representation(header: bytes, size: int) -> None:
    try:
        wanted = parse_range(header, size)
    except Unsatisfiable:
        return
    if wanted is not None:
        assert 0 <= wanted.start < wanted.end <= size


@given(st.lists(st.text(max_size=200), max_size=3))
def test_challenges_never_raise(values: list[str]) -> None:
    for challenge in parse_www_authenticate(values):
        assert challenge.scheme == challenge.scheme.lower() and challenge.scheme
        assert all(name == name.lower() for name in challenge.params)


@given(st.sets(st.sampled_from(MANIFEST_MEDIA_TYPES), min_size=1),
       st.sets(st.sampled_from(MANIFEST_MEDIA_TYPES), min_size=1))
def test_different_accepts_are_different_variants(one: set[str], other: set[str]) -> None:
    assert (variant_key("v1", tuple(one)) == variant_key("v1", tuple(other))) == (
        one == other or (one >= set(MANIFEST_MEDIA_TYPES) and other >= set(MANIFEST_MEDIA_TYPES)))
