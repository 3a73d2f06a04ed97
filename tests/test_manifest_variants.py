"""
Tests for L{ocicache._oci._manifests.variant_key}: each Accept set keeps
what a tag resolves to under its own key.
"""

from __future__ import annotations

from ocicache._oci._manifests import variant_key
from ocicache._spec._media_types import MANIFEST_MEDIA_TYPES

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI = "application/vnd.oci.image.manifest.v1+json"


def test_every_type_is_the_tag_itself() -> None:
    assert variant_key("v1", MANIFEST_MEDIA_TYPES) == "v1"
    assert variant_key("v1", tuple(reversed(MANIFEST_MEDIA_TYPES))) == "v1"


def test_a_narrow_accept_is_its_own_variant() -> None:
    assert variant_key("v1", (SCHEMA2,)) == f"v1 {SCHEMA2}"
    assert variant_key("v1", (SCHEMA2, OCI)) == variant_key("v1", (OCI, SCHEMA2, OCI))
    assert variant_key("v1", (SCHEMA2,)) != variant_key("v1", (OCI,))


def test_no_variant_is_another_tag() -> None:
    # The tag grammar has no space: a variant key is never a real tag.
    assert " " in variant_key("v1", (OCI,))


def test_hot_manifests_are_bounded_by_bytes() -> None:
    from ocicache._fetch._lru import SizedLRU
    from ocicache._oci._manifests import Manifest
    from ocicache._spec._reference import Digest

    hot: SizedLRU[Digest, Manifest] = SizedLRU(8000, lambda m: len(m.body), 8000 // 8)
    manifests = [Manifest(Digest("sha256", f"{i:064x}"), OCI, bytes(1000)) for i in range(20)]
    for manifest in manifests:
        hot.put(manifest.digest, manifest)
    assert hot.get(manifests[0].digest) is None  # the oldest went first
    assert hot.get(manifests[-1].digest) is manifests[-1]
    assert sum(1 for m in manifests if hot.get(m.digest) is not None) == 8
    hot.drop(manifests[-1].digest)
    assert hot.get(manifests[-1].digest) is None
    # One manifest of more than an eighth of the budget is not kept at all.
    big = Manifest(Digest("sha256", "f" * 64), OCI, bytes(2000))
    hot.put(big.digest, big)
    assert hot.get(big.digest) is None
