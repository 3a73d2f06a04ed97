"""
The parts of the file remotes that need no server: the path grammar, the
mutable/immutable classes, the configuration, and reading indexes.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.threadpool import ThreadPool

from ocicache._files._config import FileKind, parse_files
from ocicache._files._errors import BadPath
from ocicache._files._indexes import MAX_INDEX, index_kind, named_checksum, parse_index
from ocicache._files._key import ChecksumCheck, Expected, FileKey, file_key, generation_key
from ocicache._files._paths import is_mutable, parse_path
from ocicache._ops._config import ConfigError, parse_config
from ocicache._storage._budget import Budget
from ocicache._storage._capacity import Capacity
from ocicache._storage._disk import Disk
from ocicache._storage._metadata import Metadata
from ocicache._storage._store import Kind, Store
from ocitest.fakes import Reactor, SyncPool, run


def _path(text: str) -> list[bytes]:
    return text.encode().split(b"/")


@pytest.mark.parametrize("text", [
    "..", "a/../b", "%2e%2e/x", "%2E%2e", "a/%2f/b", "a%2fb", "a//b", "", "a/", "/a", "a\\b", "a%5cb", "a%00b",
    "a b", "a%20b", ".", "a/./b", "%2e", "a\x00b", "%ff", "a?b", "a#b", "%", "%2", "a" * 1100,
])
def test_the_path_grammar_refuses_traversal_and_strange_characters(text: str) -> None:
    with pytest.raises(BadPath):
        parse_path(_path(text))


def test_the_path_grammar_decodes_what_apt_encodes() -> None:
    path = parse_path(_path("pool/main/f/foo/foo_1.0%7erc1+dfsg-1_amd64.deb"))
    assert path.text == "pool/main/f/foo/foo_1.0~rc1+dfsg-1_amd64.deb"
    assert path.quoted[-1] == "foo_1.0~rc1+dfsg-1_amd64.deb"


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6))
def test_no_path_that_passes_can_leave_its_remote(segments: list[str]) -> None:
    raw = [segment.encode("utf-8", "surrogatepass") for segment in segments]
    try:
        path = parse_path(raw)
    except BadPath:
        return
    for segment in path.segments:
        assert segment not in ("", ".", "..") and "/" not in segment and "\\" not in segment and "\x00" not in segment


def _remote(kind: str, **extra: object) -> object:
    config = parse_files([{"name": "r", "url": "http://127.0.0.1/x", "kind": kind, **extra}], {})
    return config.remotes[0]


@pytest.mark.parametrize(("kind", "path", "mutable"), [
    ("deb", "dists/bookworm/InRelease", True),
    ("deb", "dists/bookworm/Release.gpg", True),
    ("deb", "dists/bookworm/main/binary-amd64/Packages.xz", True),
    ("deb", "dists/bookworm/main/source/Sources.gz", True),
    ("deb", "dists/bookworm/main/binary-amd64/by-hash/SHA256/" + "a" * 64, False),
    ("deb", "pool/main/h/hello/hello_2.10-3_amd64.deb", False),
    ("deb", "pool/main/h/hello/hello_2.10.orig.tar.gz", False),
    ("rpm", "repodata/repomd.xml", True),
    ("rpm", "repodata/repomd.xml.asc", True),
    ("rpm", "repodata/" + "b" * 64 + "-primary.xml.gz", False),
    ("rpm", "Packages/h/hello-1.0-1.noarch.rpm", False),
    ("apk", "v3.20/main/x86_64/APKINDEX.tar.gz", True),
    ("apk", "v3.20/main/x86_64/musl-1.2.5-r0.apk", False),
    ("generic", "releases/v1/tool.tar.gz", False),
])
def test_each_kind_brings_its_defaults(kind: str, path: str, mutable: bool) -> None:
    assert is_mutable(_remote(kind), parse_path(_path(path))) is mutable  # type: ignore[arg-type]


def test_patterns_override_the_kind_mutable_first() -> None:
    remote = _remote("generic", mutable=["latest/.*", "x/.*"], immutable=["x/.*", "dists/.*"])
    assert is_mutable(remote, parse_path(_path("latest/tool")))  # type: ignore[arg-type]
    assert is_mutable(remote, parse_path(_path("x/a")))  # type: ignore[arg-type]
    deb = _remote("deb", immutable=["dists/frozen/.*"])
    assert not is_mutable(deb, parse_path(_path("dists/frozen/InRelease")))  # type: ignore[arg-type]


@pytest.mark.parametrize(("table", "message"), [
    ({"url": "http://h/x"}, "files[0].name: required"),
    ({"name": "Debian", "url": "http://h/x"}, "files[0].name:"),
    ({"name": "a/b", "url": "http://h/x"}, "files[0].name:"),
    ({"name": "d"}, "files[0].url: required"),
    ({"name": "d", "url": "ftp://h/x"}, "files[0].url:"),
    ({"name": "d", "url": "http://h/x?q=1"}, "files[0].url:"),
    ({"name": "d", "url": "http://h/x", "kind": "zip"}, "files[0].kind:"),
    ({"name": "d", "url": "http://h/x", "mutable": ["("]}, "files[0].mutable[0]:"),
    ({"name": "d", "url": "http://h/x", "mutable_ttl": "soon"}, "files[0].mutable_ttl:"),
    ({"name": "d", "url": "http://h/x", "password": "x"}, "files[0].password:"),
    ({"name": "d", "url": "http://h/x", "username": "u"}, "files[0]: username needs"),
    ({"name": "d", "url": "http://h/x", "colour": "red"}, "files[0]: unknown key(s): colour"),
])
def test_config_errors_name_their_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_files([table], {}, {})
    assert message in str(raised.value)


def test_config_top_level_tables() -> None:
    config = parse_config({"files": [{"name": "debian", "url": "http://deb.debian.org/debian/", "kind": "deb",
                                      "username": "u", "password_env": "P"}],
                           "files_cache": {"max_size": "2GiB"}}, {"P": "secret"})
    assert config.files is not None and config.files.max_size == 2 << 30
    remote = config.files.remote_named("debian")
    assert remote is not None and remote.kind is FileKind.DEB and remote.url.to_text() == "http://deb.debian.org/debian"
    assert "secret" not in repr(remote)
    assert parse_config({}).files is None
    with pytest.raises(ConfigError, match="files\\[1\\].name: 'a' is configured twice"):
        parse_files([{"name": "a", "url": "http://h"}, {"name": "a", "url": "http://h"}], {}, {})
    with pytest.raises(ConfigError, match="files_cache: unknown key"):
        parse_files([], {"max": 1}, {})


PACKAGES = b"""Package: hello
Version: 1.0
Filename: pool/main/h/hello/hello_1.0_all.deb
Size: 1234
SHA256: %s
Description: two
 lines

Package: nochecksum
Filename: pool/main/n/nochecksum_1_all.deb

Package: escape
Filename: ../../etc/passwd
SHA256: %s
""" % (b"a" * 64, b"b" * 64)


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, lzma.compress,
                                      lambda b: zstandard.ZstdCompressor().compress(b)])
def test_a_packages_index_lists_its_packages_under_the_archive_root(tmp_path: Path, compress: object) -> None:
    index = tmp_path / "Packages"
    index.write_bytes(compress(PACKAGES))  # type: ignore[operator]
    path = "debian/dists/stable/main/binary-amd64/Packages.gz"
    root = index_kind(FileKind.DEB, path)
    assert root == "debian/"
    listed = parse_index(FileKind.DEB, str(index), root, path)
    assert listed == {"debian/pool/main/h/hello/hello_1.0_all.deb": Expected("sha256", "a" * 64, 1234, path)}


PRIMARY = b"""<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="2">
<package type="rpm"><name>hello</name>
  <checksum type="sha256" pkgid="YES">%s</checksum>
  <size package="4321" installed="1" archive="2"/>
  <location href="Packages/hello-1.0-1.noarch.rpm"/></package>
<package type="rpm"><name>elsewhere</name>
  <checksum type="sha256" pkgid="YES">%s</checksum>
  <location xml:base="http://other/" href="x.rpm"/></package>
</metadata>
""" % (b"c" * 64, b"d" * 64)


def test_a_primary_index_lists_its_packages(tmp_path: Path) -> None:
    index = tmp_path / "primary.xml.gz"
    index.write_bytes(gzip.compress(PRIMARY))
    path = "fedora/repodata/" + "e" * 64 + "-primary.xml.gz"
    root = index_kind(FileKind.RPM, path)
    assert root == "fedora/"
    assert parse_index(FileKind.RPM, str(index), root, path) == {
        "fedora/Packages/hello-1.0-1.noarch.rpm": Expected("sha256", "c" * 64, 4321, path)}
    assert index_kind(FileKind.RPM, "fedora/repodata/repomd.xml") is None
    assert index_kind(FileKind.DEB, "pool/main/hello.deb") is None


def test_an_index_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ocicache._files._indexes as indexes

    monkeypatch.setattr(indexes, "MAX_INDEX", 1 << 20)
    index = tmp_path / "Packages.gz"
    index.write_bytes(gzip.compress(b"\n" * (4 << 20)))
    with pytest.raises(indexes.IndexTooLarge):
        parse_index(FileKind.DEB, str(index), "", "dists/x/main/binary-amd64/Packages.gz")
    assert MAX_INDEX == 1 << 30


def test_names_that_are_checksums() -> None:
    assert named_checksum(FileKind.DEB, "dists/x/main/binary-amd64/by-hash/SHA256/" + "f" * 64) == Expected(
        "sha256", "f" * 64, source="its by-hash name")
    assert named_checksum(FileKind.DEB, "dists/x/main/binary-amd64/by-hash/SHA256/abc") is None
    assert named_checksum(FileKind.RPM, "repodata/" + "1" * 64 + "-filelists.xml.gz") is not None
    assert named_checksum(FileKind.RPM, "repodata/repomd.xml") is None


def test_keys_name_files_not_what_clients_wrote() -> None:
    key = file_key("r", "a/b")
    assert key == file_key("r", "a/b", Expected("sha256", "0" * 64)) and key != file_key("r", "a/b2")
    assert key != file_key("r/a", "b")  # length-prefixed parts
    assert generation_key("r", "a", "1") != generation_key("r", "a", "2")
    assert FileKey.parse(str(key)) == key
    with pytest.raises(ValueError):
        FileKey.parse("sha256:../../etc")
    check = ChecksumCheck(Expected("sha256", hashlib.sha256(b"abc").hexdigest(), 3), "p")
    check.update(b"ab")
    check.update(b"c")
    assert check.mismatch() is None
    wrong = ChecksumCheck(Expected("sha256", hashlib.sha256(b"abc").hexdigest()), "p")
    wrong.update(b"abd")
    assert "does not match" in (wrong.mismatch() or "")


def test_capacity_evicts_and_deletes_files_not_only_digests(tmp_path: Path) -> None:
    clock = Reactor()
    store = Store(str(tmp_path / "cache"))
    store.prepare()
    forgotten: list[str] = []

    def delete_blobs(names: Iterable[str], table: str) -> Deferred[None]:
        assert table == "file_entries"
        forgotten.extend(names)
        return succeed(None)

    disk = Disk(cast(IReactorTime, clock), store, cast(Metadata, SimpleNamespace(delete_blobs=delete_blobs)),
                cast(ThreadPool, SyncPool()))
    capacity = Capacity(Budget(disk.store.root, 1000, None), disk, table="file_entries", kind=Kind.FILES)
    keys = [file_key("r", f"f{n}") for n in range(3)]
    for key in keys:
        room = ensureDeferred(capacity.make_room(400))
        run(clock)
        assert room.result is True
        store.write_small(Kind.FILES, key, b"x" * 400)
        capacity.committed(key, 400)  # type: ignore[arg-type]
    # The third made room by evicting the first: from the policy, the store and the table.
    assert store.size(Kind.FILES, keys[0]) is None and forgotten == [str(keys[0])]
    assert capacity.size == 800 and all(store.size(Kind.FILES, key) == 400 for key in keys[1:])
