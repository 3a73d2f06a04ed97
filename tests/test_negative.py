"""
Tests for L{ocicache._fetch._negative.NegativeCache}: upstream 404s
remembered for their TTL, per key, within a memory bound.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from ocicache._fetch._negative import ENTRY_OVERHEAD, NegativeCache
from ocicache._oci._errors import BlobUnknown, ManifestUnknown, RepositoryUnknown

TAG = ("docker.io", "library/alpine", "manifest", "nosuch")
DIGEST = ("docker.io", "library/alpine", "blob", "sha256:" + "0" * 64)


def test_a_404_is_raised_again_until_its_ttl_passes() -> None:
    clock = Clock()
    negative = NegativeCache(clock, ttl=30.0, digest_ttl=5.0)
    negative.check(TAG)  # nothing remembered: no error
    negative.remember(TAG, ManifestUnknown("library/alpine:nosuch is not known"), by_digest=False)
    clock.advance(29.9)
    with pytest.raises(ManifestUnknown, match="^library/alpine:nosuch is not known$"):
        negative.check(TAG)
    clock.advance(0.1)
    negative.check(TAG)
    assert len(negative) == 0


def test_a_missing_digest_is_remembered_for_its_shorter_ttl() -> None:
    clock = Clock()
    negative = NegativeCache(clock, ttl=30.0, digest_ttl=5.0)
    negative.remember(DIGEST, BlobUnknown("gone"), by_digest=True)
    clock.advance(4.9)
    with pytest.raises(BlobUnknown):
        negative.check(DIGEST)
    clock.advance(0.1)
    negative.check(DIGEST)


def test_each_raise_is_a_new_error() -> None:
    # Raising one instance again and again would grow its traceback.
    negative = NegativeCache(Clock())
    negative.remember(TAG, RepositoryUnknown("no repo"), by_digest=False)
    raised = []
    for _ in range(2):
        with pytest.raises(RepositoryUnknown) as info:
            negative.check(TAG)
        raised.append(info.value)
    assert raised[0] is not raised[1]


def test_a_404_stands_only_for_its_own_key() -> None:
    negative = NegativeCache(Clock())
    negative.remember(TAG, ManifestUnknown("x"), by_digest=False)
    for other in [("ghcr.io", *TAG[1:]), (TAG[0], "library/other", *TAG[2:]), (*TAG[:3], "nosuch2"),
                  (*TAG[:3], "nosuch application/vnd.oci.image.manifest.v1+json"), (TAG[0], TAG[1], "tags", TAG[3])]:
        negative.check(other)


def test_ttl_zero_remembers_nothing() -> None:
    negative = NegativeCache(Clock(), ttl=0.0, digest_ttl=0.0)
    negative.remember(TAG, ManifestUnknown("x"), by_digest=False)
    negative.remember(DIGEST, BlobUnknown("x"), by_digest=True)
    negative.check(TAG)
    negative.check(DIGEST)
    assert len(negative) == 0


def test_memory_is_bounded() -> None:
    budget = 100 * ENTRY_OVERHEAD
    negative = NegativeCache(Clock(), max_bytes=budget)
    for i in range(10_000):
        negative.remember(("docker.io", f"repo{i}", "manifest", "v1"), ManifestUnknown("x"), by_digest=False)
    assert len(negative) < 100
    # The most recent are kept, the oldest went first.
    with pytest.raises(ManifestUnknown):
        negative.check(("docker.io", "repo9999", "manifest", "v1"))
    negative.check(("docker.io", "repo0", "manifest", "v1"))
