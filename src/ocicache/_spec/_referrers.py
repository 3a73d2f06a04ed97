"""
The referrers API's values (distribution-spec "Listing Referrers",
"Referrers Tag Schema"): the media type grammar of C{artifactType}, the
fallback tag of a subject digest, and the image index a listing is.
"""

from __future__ import annotations

import json
import re

from ._reference import Digest

__all__ = [
    "ARTIFACT_TYPE_FILTER",
    "IMAGE_INDEX",
    "InvalidIndex",
    "empty_index",
    "filter_index",
    "is_media_type",
    "referrers_tag",
]

IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
"""A referrers listing is an image index (image-spec image-index.md)."""

ARTIFACT_TYPE_FILTER = "artifactType"
"""The filter's name, in the query and in C{OCI-Filters-Applied}."""

# RFC 6838 §4.2, which image-spec requires of artifactType:
#   type-name "/" subtype-name, each a restricted-name:
#   restricted-name-first *126restricted-name-chars
#   restricted-name-first = ALPHA / DIGIT
#   restricted-name-chars = ALPHA / DIGIT / "!" / "#" / "$" / "&" / "-" /
#                           "^" / "_" / "." / "+"
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(_RESTRICTED_NAME + "/" + _RESTRICTED_NAME)

_TAG_REF_LIMIT = 64
"""Referrers Tag Schema: C{<ref>} is the digest, to at most 64 characters."""


class InvalidIndex(ValueError):
    """A body is not an image index."""


def is_media_type(text: str) -> bool:
    """Whether C{text} is a media type by RFC 6838's grammar, parameters excluded."""
    return _MEDIA_TYPE.fullmatch(text) is not None


def referrers_tag(subject: Digest) -> str:
    """
    The tag under which clients of a registry without the referrers API
    keep C{subject}'s referrers: C{<alg>-<ref>} (distribution-spec
    "Referrers Tag Schema").
    """
    return f"{subject.algorithm}-{subject.encoded[:_TAG_REF_LIMIT]}"


def empty_index() -> bytes:
    """
    The answer when there are no referrers: an empty index, never a 404
    ("If a query results in no matching referrers, an empty manifest list
    MUST be returned").
    """
    return _dump([])


def filter_index(body: bytes, artifact_type: str | None) -> bytes:
    """
    The referrers listed in the index C{body}, those of C{artifact_type}
    only when it is given, as a new index.

    @raise InvalidIndex: If C{body} is not an image index.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidIndex("not JSON") from None
    entries = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InvalidIndex("no manifests list")
    if artifact_type is not None:
        entries = [entry for entry in entries if entry.get("artifactType") == artifact_type]
    return _dump(entries)


def _dump(entries: list[object]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": entries},
        separators=(",", ":"),
    ).encode("utf-8")
