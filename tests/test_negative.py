"""
Tests for L{ocicache._fetch._negative.NegativeCache}: upstream 404s
remembered for their TTL, per key, within a memory bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from ocicache._fetch._negative import ENTRY_OVERHEAD, NegativeCache, NegativeKey
from ocicache._oci._errors import BlobUnknown, ManifestUnknown, RepositoryUnknown
from ocicache._storage._metadata import Metadata
from ocitest.fakes import Reactor, SyncThreadPool, run

TAG = ("docker.io", "library/alpine", "manifest", "nosuch")
DIGEST = ("docker.io", "library/alpine", "blob", "sha256:" + "0" * 64)


def _check(negative: NegativeCache, key: NegativeKey) -> None:
    """C{negative.check(key)}, which without a shared store answers at once: its error raised here."""
    failures: list[Failure] = []
    Deferred.fromCoroutine(negative.check(key)).addErrback(failures.append)
    if failures:
        failures[0].raiseException()


def test_a_404_is_raised_again_until_its_ttl_passes() -> None:
    clock = Clock()
    negative = NegativeCache(clock, ttl=30.0, digest_ttl=5.0)
    _check(negative, TAG)  # nothing remembered: no error
    negative.remember(TAG, ManifestUnknown("library/alpine:nosuch is not known"), by_digest=False)
    clock.advance(29.9)
    with pytest.raises(ManifestUnknown, match="^library/alpine:nosuch is not known$"):
        _check(negative, TAG)
    clock.advance(0.1)
    _check(negative, TAG)
    assert len(negative) == 0


def test_a_missing_digest_is_remembered_for_its_shorter_ttl() -> None:
    clock = Clock()
    negative = NegativeCache(clock, ttl=30.0, digest_ttl=5.0)
    negative.remember(DIGEST, BlobUnknown("gone"), by_digest=True)
    clock.advance(4.9)
    with pytest.raises(BlobUnknown):
        _check(negative, DIGEST)
    clock.advance(0.1)
    _check(negative, DIGEST)


def test_each_raise_is_a_new_error() -> None:
    # Raising one instance again and again would grow its traceback.
    negative = NegativeCache(Clock())
    negative.remember(TAG, RepositoryUnknown("no repo"), by_digest=False)
    raised = []
    for _ in range(2):
        with pytest.raises(RepositoryUnknown) as info:
            _check(negative, TAG)
        raised.append(info.value)
    assert raised[0] is not raised[1]


def test_a_404_stands_only_for_its_own_key() -> None:
    negative = NegativeCache(Clock())
    negative.remember(TAG, ManifestUnknown("x"), by_digest=False)
    for other in [("ghcr.io", *TAG[1:]), (TAG[0], "library/other", *TAG[2:]), (*TAG[:3], "nosuch2"),
                  (*TAG[:3], "nosuch application/vnd.oci.image.manifest.v1+json"), (TAG[0], TAG[1], "tags", TAG[3])]:
        _check(negative, other)


def test_ttl_zero_remembers_nothing() -> None:
    negative = NegativeCache(Clock(), ttl=0.0, digest_ttl=0.0)
    negative.remember(TAG, ManifestUnknown("x"), by_digest=False)
    negative.remember(DIGEST, BlobUnknown("x"), by_digest=True)
    _check(negative, TAG)
    _check(negative, DIGEST)
    assert len(negative) == 0


def test_memory_is_bounded() -> None:
    budget = 100 * ENTRY_OVERHEAD
    negative = NegativeCache(Clock(), max_bytes=budget)
    for i in range(10_000):
        negative.remember(("docker.io", f"repo{i}", "manifest", "v1"), ManifestUnknown("x"), by_digest=False)
    assert len(negative) < 100
    # The most recent are kept, the oldest went first.
    with pytest.raises(ManifestUnknown):
        _check(negative, ("docker.io", "repo9999", "manifest", "v1"))
    _check(negative, ("docker.io", "repo0", "manifest", "v1"))


def _metadata(path: str, clock: Reactor) -> Metadata:
    """One process's connection to the store's database."""
    metadata = Metadata(path, clock)  # type: ignore[arg-type]  # it only calls callFromThread, which the fake has
    metadata._pool = SyncThreadPool(minthreads=0, maxthreads=1)  # type: ignore[assignment]
    metadata.open()
    run(clock)
    return metadata


def _outcome(clock: Reactor, negative: NegativeCache, key: NegativeKey) -> Failure | None:
    failures: list[Failure] = []
    Deferred.fromCoroutine(negative.check(key)).addErrback(failures.append)
    run(clock)
    return failures[0] if failures else None


def test_what_one_process_remembers_the_other_finds(tmp_path: Path) -> None:
    clock = Reactor()
    path = str(tmp_path / "metadata.sqlite")
    one = NegativeCache(clock, ttl=30.0, digest_ttl=5.0, shared=_metadata(path, clock))
    two = NegativeCache(clock, ttl=30.0, digest_ttl=5.0, shared=_metadata(path, clock))
    assert _outcome(clock, two, TAG) is None
    one.remember(TAG, ManifestUnknown("library/alpine:nosuch is not known"), by_digest=False)
    one.remember(DIGEST, BlobUnknown("gone"), by_digest=True)
    run(clock)
    # The same error, of the same type, from the other process.
    found = _outcome(clock, two, TAG)
    assert found is not None and found.check(ManifestUnknown)
    assert str(found.value) == "library/alpine:nosuch is not known"
    found = _outcome(clock, two, DIGEST)
    assert found is not None and found.check(BlobUnknown)
    # Each until its own TTL, in both.
    clock.advance(6)
    assert _outcome(clock, two, DIGEST) is None and _outcome(clock, one, DIGEST) is None
    assert _outcome(clock, two, TAG) is not None
    clock.advance(25)
    assert _outcome(clock, two, TAG) is None
