"""
Tests for L{ocicache._cache._manifests.variant_key}: each Accept set keeps
what a tag resolves to under its own key.
"""

from __future__ import annotations

from ocicache._cache._manifests import variant_key
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
