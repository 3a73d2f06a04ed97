"""
What a repository's own indexes say its files are, so that a package is
kept only if its bytes are the ones listed.

- deb: a C{Packages} index (plain or compressed, or the same under
  C{binary-*/by-hash/}) lists each package's C{Filename} (relative to the
  archive root, the path above C{dists/}), C{Size} and C{SHA256}
  (Debian Policy §5.6 and the Debian Repository Format).
- rpm: C{repodata/*primary.xml*} lists each package's
  C{<location href>} (relative to the directory above C{repodata/}) and
  C{<checksum type>}, and C{<size package>} (createrepo's format).
- Both name some files by their checksum: C{by-hash/SHA256/<hex>} paths,
  and rpm repodata files C{<hex>-primary.xml.gz}.

Parsing is CPU work on files of many MiB: L{parse_index} runs in the disk
pool, and decompresses at most L{MAX_INDEX} bytes.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import lzma
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from typing import IO, BinaryIO, cast

import zstandard

from ._config import FileKind
from ._key import ALGORITHMS, Expected

__all__ = ["MAX_INDEX", "IndexTooLarge", "index_kind", "named_checksum", "parse_index"]

MAX_INDEX = 1 << 30
"""Decompressed bytes of one index read at most: an index bomb is refused, not expanded."""

_DEB_INDEX = re.compile(
    r"(?P<root>(?:.*/)?)dists/.*/binary-[^/]+/(?:Packages(?:\.[a-z0-9]+)?|by-hash/[^/]+/[0-9a-f]+)")
_RPM_INDEX = re.compile(r"(?P<root>(?:.*/)?)repodata/(?:[0-9a-f]+-)?primary\.xml(?:\.[a-z0-9]+)?")
_BY_HASH = re.compile(r"(?:.*/)?by-hash/(?P<algorithm>[A-Za-z0-9]+)/(?P<hex>[0-9a-f]+)")
_REPODATA = re.compile(r"(?:.*/)?repodata/(?P<hex>[0-9a-f]{40,128})-[^/]+")
_BY_HASH_NAMES = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_HEX_LENGTHS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}


class IndexTooLarge(Exception):
    """An index decompresses to more than L{MAX_INDEX} bytes."""


def index_kind(kind: FileKind, path: str) -> str | None:
    """
    The archive root (the path prefix its C{Filename}s or C{href}s are
    relative to) when C{path} is an index that lists packages; C{None}
    otherwise.
    """
    pattern = {FileKind.DEB: _DEB_INDEX, FileKind.RPM: _RPM_INDEX}.get(kind)
    if pattern is None:
        return None
    match = pattern.fullmatch(path)
    return match.group("root") if match is not None else None


def named_checksum(kind: FileKind, path: str) -> Expected | None:
    """What a path names its own content by: C{by-hash/SHA256/<hex>}, rpm's C{repodata/<hex>-...}."""
    if kind in (FileKind.DEB, FileKind.GENERIC):
        match = _BY_HASH.fullmatch(path)
        if match is not None:
            algorithm = _BY_HASH_NAMES.get(match.group("algorithm"))
            if algorithm is not None and _HEX_LENGTHS.get(len(match.group("hex"))) == algorithm:
                return Expected(algorithm, match.group("hex"), source="its by-hash name")
    if kind is FileKind.RPM:
        match = _REPODATA.fullmatch(path)
        if match is not None:
            algorithm = _HEX_LENGTHS.get(len(match.group("hex")))
            if algorithm is not None:
                return Expected(algorithm, match.group("hex"), source="its repodata name")
    return None


def parse_index(kind: FileKind, file: str | int, root: str, index_path: str) -> dict[str, Expected]:
    """
    The packages C{file} (a stored index, compressed or not: its path, or
    a descriptor open on it, read from its start and left open) lists:
    path under the remote to what it must be.  Blocking: run it in the
    disk pool.
    """
    source = f"{index_path}"
    with open(file, "rb", closefd=isinstance(file, str)) as raw, _decompressed(raw) as stream:
        bounded = _Bounded(stream)
        if kind is FileKind.DEB:
            return dict(_deb_packages(bounded, root, source))
        return dict(_rpm_packages(bounded, root, source))


def _decompressed(raw: IO[bytes]) -> BinaryIO:
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw))
    if magic.startswith(b"\xfd7zXZ") or magic.startswith(b"\x5d\x00\x00"):
        return cast(BinaryIO, lzma.LZMAFile(raw))
    if magic.startswith(b"BZh"):
        return cast(BinaryIO, bz2.BZ2File(raw))
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(raw))
    return cast(BinaryIO, raw)


class _Bounded:
    """Reads a decompressed stream, refusing to go past L{MAX_INDEX} bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._read = 0

    def read(self, size: int = 1 << 20) -> bytes:
        data = self._stream.read(size if size > 0 else 1 << 20)
        self._read += len(data)
        if self._read > MAX_INDEX:
            raise IndexTooLarge(f"an index larger than {MAX_INDEX} bytes")
        return data

    def lines(self) -> Iterator[bytes]:
        rest = b""
        while True:
            data = self.read()
            if not data:
                break
            rest += data
            *whole, rest = rest.split(b"\n")
            yield from whole
        if rest:
            yield rest


def _deb_packages(stream: _Bounded, root: str, source: str) -> Iterator[tuple[str, Expected]]:
    """The stanzas of a C{Packages} file (RFC 822-like fields, blank-line separated)."""
    fields: dict[bytes, bytes] = {}
    for line in itertools.chain(stream.lines(), (b"",)):
        if not line.strip():
            entry = _deb_entry(fields, root, source)
            if entry is not None:
                yield entry
            fields = {}
            continue
        if line[:1] in (b" ", b"\t"):
            continue  # a continuation line: no field we read spans lines
        name, colon, value = line.partition(b":")
        if colon:
            fields[name.strip()] = value.strip()


def _deb_entry(fields: dict[bytes, bytes], root: str, source: str) -> tuple[str, Expected] | None:
    filename = fields.get(b"Filename")
    sha256 = fields.get(b"SHA256")
    if filename is None or sha256 is None or not re.fullmatch(rb"[0-9a-f]{64}", sha256):
        return None
    size = fields.get(b"Size")
    try:
        path = filename.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if path.startswith("/") or "/../" in f"/{path}/":
        return None
    return root + path, Expected("sha256", sha256.decode("ascii"),
                                 int(size) if size is not None and size.isdigit() else None, source)


_NS = "{http://linux.duke.edu/metadata/common}"


def _rpm_packages(stream: _Bounded, root: str, source: str) -> Iterator[tuple[str, Expected]]:
    # expat does not fetch external entities; the bound above caps what
    # internal ones could expand to.
    parser: ElementTree.XMLPullParser[ElementTree.Element] = ElementTree.XMLPullParser(events=("end",))
    while True:
        data = stream.read()
        if data:
            parser.feed(data)
        else:
            parser.close()
        for event in parser.read_events():
            element: object = event[1]  # type: ignore[misc]  # typeshed's tuple is too narrow
            if not isinstance(element, ElementTree.Element) or element.tag != f"{_NS}package":
                continue
            entry = _rpm_entry(element, root, source)
            element.clear()
            if entry is not None:
                yield entry
        if not data:
            return


def _rpm_entry(package: ElementTree.Element, root: str, source: str) -> tuple[str, Expected] | None:
    checksum = package.find(f"{_NS}checksum")
    location = package.find(f"{_NS}location")
    if checksum is None or location is None or location.get("{http://www.w3.org/XML/1998/namespace}base") is not None:
        return None
    algorithm = (checksum.get("type") or "").lower()
    if algorithm == "sha":
        algorithm = "sha1"
    digest = (checksum.text or "").strip()
    href = location.get("href")
    if algorithm not in ALGORITHMS or _HEX_LENGTHS.get(len(digest)) != algorithm or href is None:
        return None
    if href.startswith("/") or "/../" in f"/{href}/" or "://" in href:
        return None
    size_element = package.find(f"{_NS}size")
    size_text = size_element.get("package") if size_element is not None else None
    size = int(size_text) if size_text is not None and size_text.isdigit() else None
    return root + href, Expected(algorithm, digest, size, source)
