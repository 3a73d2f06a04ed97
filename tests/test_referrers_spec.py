"""
Tests for L{ocicache._spec._referrers}: the C{artifactType} grammar, the
fallback tag of a subject, and the image index a listing is.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocicache._spec._reference import Digest, validate_tag
from ocicache._spec._referrers import IMAGE_INDEX, InvalidIndex, empty_index, filter_index, is_media_type, referrers_tag

SBOM = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "1" * 64, "size": 9,
        "artifactType": "application/spdx+json"}
SIGNATURE = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "2" * 64, "size": 9,
             "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}
UNTYPED = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + "3" * 64, "size": 9}


def test_the_fallback_tag_is_alg_dash_ref() -> None:
    # distribution-spec "Referrers Tag Schema", its own example.
    subject = Digest.parse("sha256:" + "a" * 64)
    assert referrers_tag(subject) == "sha256-" + "a" * 64


def test_the_fallback_tag_of_a_long_digest_is_cut_to_64_and_is_a_tag() -> None:
    subject = Digest.parse("sha512:" + "0123456789abcdef" * 8)
    tag = referrers_tag(subject)
    assert tag == "sha512-" + ("0123456789abcdef" * 8)[:64]
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("text", [
    "application/spdx+json", "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.cncf.notary.signature", "text/plain", "a/b", "A1/x!#$&^_.+-",
])
def test_media_types(text: str) -> None:
    assert is_media_type(text)


@pytest.mark.parametrize("text", [
    "", "sbom", "/json", "application/", "application/json; charset=utf-8", "a/b/c", ".a/b", "a/-b",
    "a/b\n", "a/b ", "application/" + "x" * 128, "é/b",
])
def test_not_media_types(text: str) -> None:
    assert not is_media_type(text)


def _entries(body: bytes) -> list[object]:
    document = json.loads(body)
    assert (document["schemaVersion"], document["mediaType"]) == (2, IMAGE_INDEX)
    entries = document["manifests"]
    assert isinstance(entries, list)
    return entries


def test_the_empty_index_lists_nothing() -> None:
    assert _entries(empty_index()) == []


def test_filtering_keeps_only_the_artifact_type() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": [SBOM, SIGNATURE, UNTYPED]})
    assert _entries(filter_index(body.encode(), "application/spdx+json")) == [SBOM]
    assert _entries(filter_index(body.encode(), "application/none")) == []
    assert _entries(filter_index(body.encode(), None)) == [SBOM, SIGNATURE, UNTYPED]


@pytest.mark.parametrize("body", [b"", b"[]", b'{"manifests": {}}', b'{"manifests": [1]}', b"\xff", b"[" * 100000])
def test_what_is_not_an_index_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidIndex):
        filter_index(body, None)


@settings(deadline=None)  # the suite shares its cores: no timing here
@given(st.binary(max_size=200))
def test_any_bytes_are_an_index_or_refused(body: bytes) -> None:
    try:
        entries = _entries(filter_index(body, "a/b"))
    except InvalidIndex:
        return
    assert all(isinstance(entry, dict) and entry.get("artifactType") == "a/b" for entry in entries)
