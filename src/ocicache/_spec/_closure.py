"""
What an image consists of: the platforms of an index, and the config and
layers of an image manifest (image-spec image-index.md, manifest.md and
descriptor.md), as values read from a manifest's bytes.

Warming and pinning walk this closure: an index, only the manifests of the
platforms asked for, then each one's config and layers.
"""

from __future__ import annotations

import json
import platform as _platform
import re
from collections.abc import Iterable

from attrs import frozen

from ._reference import Digest

__all__ = [
    "Descriptor",
    "INDEX_MEDIA_TYPES",
    "Platform",
    "host_platform",
    "image_blobs",
    "index_manifests",
    "select_platforms",
]

INDEX_MEDIA_TYPES = frozenset({
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
})
"""An index (image-spec image-index.md) or a Docker manifest list."""


_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@frozen
class Platform:
    """
    C{os/architecture[/variant]} (image-spec image-index.md C{platform}).
    """

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """
        Parse C{linux/amd64} or C{linux/arm64/v8}.

        @raise ValueError: If it is not of that form.
        """
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(_PART.fullmatch(part) for part in parts):
            raise ValueError(f"{text!r} is not a platform such as 'linux/amd64' or 'linux/arm64/v8'")
        return cls(parts[0].lower(), parts[1].lower(), parts[2].lower() if len(parts) == 3 else None)

    def matches(self, described: Platform) -> bool:
        """
        Whether an index entry for C{described} serves this platform: the
        same OS and architecture, and the variant when this one names one.
        """
        return (self.os == described.os and self.architecture == described.architecture
                and (self.variant is None or self.variant == described.variant))

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


_MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i386": ("386", None), "i686": ("386", None),
}


def host_platform() -> Platform:
    """This machine's platform in OCI terms (C{linux/amd64} on x86-64 Linux)."""
    system = _platform.system().lower() or "linux"
    machine = _platform.machine().lower()
    architecture, variant = _MACHINES.get(machine, (machine, None))
    return Platform(system, architecture, variant)


@frozen
class Descriptor:
    """
    A reference to content (image-spec descriptor.md): its digest, its
    declared size, its media type and, in an index, its platform.
    """

    digest: Digest
    size: int
    media_type: str
    platform: Platform | None = None


def _document(body: bytes) -> dict[str, object]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return document if isinstance(document, dict) else {}


def _descriptor(entry: object) -> Descriptor | None:
    if not isinstance(entry, dict):
        return None
    digest, size, media_type = entry.get("digest"), entry.get("size"), entry.get("mediaType")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None
    try:
        parsed = Digest.parse(digest)
    except ValueError:
        return None
    described = None
    platform = entry.get("platform")
    if isinstance(platform, dict):
        os_, architecture, variant = platform.get("os"), platform.get("architecture"), platform.get("variant")
        if isinstance(os_, str) and isinstance(architecture, str):
            described = Platform(os_.lower(), architecture.lower(),
                                 variant.lower() if isinstance(variant, str) else None)
    return Descriptor(parsed, size, media_type if isinstance(media_type, str) else "", described)


def index_manifests(body: bytes) -> list[Descriptor]:
    """An index's C{manifests[]}, those that are well-formed descriptors."""
    entries = _document(body).get("manifests")
    if not isinstance(entries, list):
        return []
    return [d for d in (_descriptor(entry) for entry in entries) if d is not None]


def select_platforms(entries: Iterable[Descriptor], platforms: Iterable[Platform]) -> list[Descriptor]:
    """
    The entries of an index that serve one of C{platforms}, in the index's
    order; for each platform the first match only, as a client pulling it
    would choose.
    """
    entries = list(entries)
    chosen: list[Descriptor] = []
    for wanted in platforms:
        for entry in entries:
            if entry.platform is not None and wanted.matches(entry.platform):
                if entry not in chosen:
                    chosen.append(entry)
                break
    return [entry for entry in entries if entry in chosen]


def image_blobs(body: bytes) -> list[Descriptor]:
    """
    An image manifest's C{config}, then its C{layers[]} (image-spec
    manifest.md), without repeats.
    """
    document = _document(body)
    found: list[Descriptor] = []
    config = _descriptor(document.get("config"))
    if config is not None:
        found.append(config)
    layers = document.get("layers")
    for entry in layers if isinstance(layers, list) else []:
        layer = _descriptor(entry)
        if layer is not None and all(layer.digest != seen.digest for seen in found):
            found.append(layer)
    return found
