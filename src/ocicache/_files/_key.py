"""
What names a file in the store, and what its bytes must match before they
are kept.

A file is named by a SHA-256 of what identifies it, never by anything a
client wrote as such: an immutable file by its remote and path, a mutable
file by its remote, path and generation (a fresh random name for each
version fetched, so a new version is committed beside the old one and
replaces it atomically: L{ocicache._files._mutable}).  Its bytes are
checked against what the repository itself says of them (L{Expected}: a
C{Packages} index's SHA256, a C{by-hash} name) when ocicache knows it;
the length against C{Content-Length} always (the download's own check).
"""

from __future__ import annotations

import hashlib

from attrs import field, frozen

__all__ = ["Expected", "FileKey", "NoCheck", "file_key", "generation_key"]

ALGORITHMS = frozenset({"md5", "sha1", "sha256", "sha512"})
"""The checksums repositories name files by (hashlib's names)."""


@frozen
class Expected:
    """What a repository's index says a file is: its checksum, and perhaps its length."""

    algorithm: str
    hexdigest: str
    size: int | None = None
    source: str = "the repository index"
    """What said so, for the error message."""


class NoCheck:
    """Nothing is known of the bytes beyond their length."""

    def update(self, data: bytes) -> None:
        pass

    def mismatch(self) -> str | None:
        return None


class ChecksumCheck:
    """The bytes must hash to C{expected} (and have its length, when it has one)."""

    def __init__(self, expected: Expected, path: str) -> None:
        self._expected = expected
        self._path = path
        self._hash = hashlib.new(expected.algorithm)
        self._length = 0

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self._length += len(data)

    def mismatch(self) -> str | None:
        expected = self._expected
        if expected.size is not None and self._length != expected.size:
            return f"{self._path}: {self._length} bytes, {expected.source} says {expected.size}"
        if self._hash.hexdigest() != expected.hexdigest:
            return f"{self._path}: its {expected.algorithm} does not match {expected.source}"
        return None


@frozen
class FileKey:
    """
    A stored file's name (C{algorithm}, C{encoded}: what equality and the
    store see) and, for the fill that fetches it, what its bytes must be.
    """

    algorithm: str
    encoded: str
    path: str = field(default="", eq=False, repr=False)
    expected: Expected | None = field(default=None, eq=False, repr=False)

    def verifier(self) -> NoCheck | ChecksumCheck:
        if self.expected is None:
            return NoCheck()
        return ChecksumCheck(self.expected, self.path)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @classmethod
    def parse(cls, text: str) -> FileKey:
        """A key as the metadata table writes it (C{sha256:<hex>}); C{ValueError} otherwise."""
        algorithm, _, encoded = text.partition(":")
        if algorithm != "sha256" or len(encoded) != 64 or encoded.strip("0123456789abcdef"):
            raise ValueError(f"not a file key: {text!r}")
        return cls(algorithm, encoded)


def _named(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8")
        # Length-prefixed: no two tuples of parts make the same bytes.
        digest.update(b"%d:" % len(encoded) + encoded)
    return digest.hexdigest()


def file_key(remote: str, path: str, expected: Expected | None = None) -> FileKey:
    """The key of an immutable file."""
    return FileKey("sha256", _named("file", remote, path), path, expected)


def generation_key(remote: str, path: str, generation: str) -> FileKey:
    """The key of one version of a mutable file."""
    return FileKey("sha256", _named("generation", remote, path, generation), path)


def record_key(remote: str, path: str) -> FileKey:
    """
    The key of a mutable file's record (L{ocicache._files._mutable.Record}),
    in a directory of its own (C{files/record/}), apart from the files.
    """
    return FileKey("record", _named("record", remote, path), path)
