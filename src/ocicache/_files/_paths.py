"""
The path of a file under its remote: checked against a grammar before
anything touches the disk or the network, and classed mutable or
immutable.

A path is one or more segments of RFC 3986 unreserved characters and a
few sub-delims (C{+ = , ; : @ ~}), percent-encoding allowed for them only
(apt writes C{~} as C{%7e}): so no C{..} or C{.} segment, no empty segment
(C{//}), no encoded C{/}, backslash, NUL or control character can reach
the upstream's URL, whatever the encoding.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from attrs import frozen

from ._config import FileKind, RemoteConfig
from ._errors import BadPath

__all__ = ["MAX_PATH", "FilePath", "is_mutable", "parse_path"]

MAX_PATH = 1024
"""Bytes of a path, as the client wrote it."""

MAX_SEGMENTS = 32

_RAW = re.compile(rb"(?:[A-Za-z0-9._~+=,;:@-]|%[0-9A-Fa-f]{2})+")
_DECODED = re.compile(r"[A-Za-z0-9._~+=,;:@-]+")
_SAFE = "~+=,;:@-._"
"""Characters sent to the upstream as they are; anything else is percent-encoded."""


@frozen
class FilePath:
    """A path that passed the grammar: its decoded segments."""

    segments: tuple[str, ...]

    @property
    def text(self) -> str:
        return "/".join(self.segments)

    @property
    def quoted(self) -> tuple[str, ...]:
        """The segments as the upstream's URL carries them."""
        return tuple(quote(segment, safe=_SAFE) for segment in self.segments)

    def __str__(self) -> str:
        return self.text


def parse_path(raw: list[bytes]) -> FilePath:
    """
    The path after C{/files/<remote>/}, as raw (still percent-encoded)
    segments: a L{FilePath}, or L{BadPath}.
    """
    if not raw or sum(len(segment) + 1 for segment in raw) > MAX_PATH or len(raw) > MAX_SEGMENTS:
        raise BadPath("the path is empty or too long")
    segments = []
    for segment in raw:
        if _RAW.fullmatch(segment) is None:
            raise BadPath("the path has an empty segment or a character outside its grammar")
        try:
            text = unquote(segment.decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            raise BadPath("the path has a percent-encoding that is not UTF-8") from None
        # Decoded again: %2e%2e is "..", %2f a "/", %5c a backslash.
        if _DECODED.fullmatch(text) is None or text in (".", ".."):
            raise BadPath("the path has a '.' or '..' segment or an encoded character outside its grammar")
        segments.append(text)
    return FilePath(tuple(segments))


_DEFAULT_MUTABLE: dict[FileKind, tuple[re.Pattern[str], ...]] = {
    FileKind.GENERIC: (),
    FileKind.DEB: (
        # by-hash paths name their content: immutable (checked first).
        re.compile(r"(?:.*/)?(?:InRelease|Release|Release\.gpg)"),
        re.compile(r"(?:.*/)?(?:Packages|Sources|Translation-[^/]+|Contents-[^/]+|Components-[^/]+|"
                   r"icons-[^/]+|Commands-[^/]+|Index)(?:\.[a-z0-9]+)?"),
    ),
    FileKind.RPM: (re.compile(r"(?:.*/)?repodata/repomd\.xml(?:\.asc|\.key)?"),),
    FileKind.APK: (re.compile(r"(?:.*/)?APKINDEX\.tar\.gz"),),
}
_BY_HASH = re.compile(r"(?:.*/)?by-hash/[A-Za-z0-9]+/[0-9a-f]+")


def is_mutable(remote: RemoteConfig, path: FilePath) -> bool:
    """
    Whether C{path} may change under its name: the remote's own patterns
    first (C{mutable} over C{immutable}), then its kind's defaults; what
    nothing names is immutable.
    """
    text = path.text
    if any(pattern.fullmatch(text) for pattern in remote.mutable):
        return True
    if any(pattern.fullmatch(text) for pattern in remote.immutable):
        return False
    if remote.kind is FileKind.DEB and _BY_HASH.fullmatch(text):
        return False
    return any(pattern.fullmatch(text) for pattern in _DEFAULT_MUTABLE[remote.kind])
