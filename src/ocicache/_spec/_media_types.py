"""
Manifest media types: which ones a client accepts, and which one a
manifest is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = ["MANIFEST_MEDIA_TYPES", "accepted_manifest_types", "manifest_media_type"]

# distribution-spec, "Pulling manifests": the manifest media types a pull
# asks for, OCI first (image-spec media-types.md), then Docker's schema 2.
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)

_NOT_A_MANIFEST_TYPE = ("application/octet-stream", "text/plain", "application/json")


def accepted_manifest_types(values: Sequence[bytes]) -> tuple[str, ...]:
    """
    The manifest media types named by a request's C{Accept} values
    (RFC 9110 §12.5.1), in order, or all of them when it names none we
    know.  Parameters such as C{q} are ignored: registries answer with any
    listed type.
    """
    wanted: list[str] = []
    for value in values:
        for item in value.decode("ascii", "replace").split(","):
            media_type = item.split(";")[0].strip()
            if media_type in MANIFEST_MEDIA_TYPES and media_type not in wanted:
                wanted.append(media_type)
    return tuple(wanted) or MANIFEST_MEDIA_TYPES


def manifest_media_type(content_type: bytes, body: bytes) -> str:
    """
    A manifest's media type: the upstream's C{Content-Type}, or else the
    C{mediaType} field the body declares (image-spec manifest.md).
    """
    declared = content_type.split(b";")[0].strip().decode("ascii", "replace")
    if declared and declared not in _NOT_A_MANIFEST_TYPE:
        return declared
    try:
        field = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        field = None
    if isinstance(field, str) and field:
        return field
    return declared or MANIFEST_MEDIA_TYPES[0]
