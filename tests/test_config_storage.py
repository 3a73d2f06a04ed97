"""
C{[storage]}: the filesystem default, and the S3 backend's keys, each
refused with one line naming it; the keys never appear in a repr.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import attrs
import pytest

from ocicache._ops._config import ConfigError, S3Config, parse_config

REPO = pathlib.Path(__file__).resolve().parent.parent

ENV = {"S3_ACCESS": "AKIDEXAMPLE", "S3_SECRET": "very-secret-value"}


def s3(**extra: object) -> dict[str, Any]:
    return {"storage": {"backend": "s3", "endpoint": "http://127.0.0.1:7480", "bucket": "ocicache",
                        "access_key_env": "S3_ACCESS", "secret_key_env": "S3_SECRET", **extra}}


def test_the_default_is_the_filesystem() -> None:
    assert parse_config({}, {}).storage.s3 is None
    assert parse_config({"storage": {"backend": "filesystem"}}, {}).storage.backend == "filesystem"


def test_s3_defaults() -> None:
    config = parse_config(s3(), ENV).storage.s3
    assert config is not None
    assert (config.bucket, config.region, config.prefix, config.path_style) == ("ocicache", "us-east-1", "", True)
    assert (config.local_max_size, config.redirect) == (0, False)
    assert (config.upload_part_size, config.max_part_uploads, config.abandon_uploads_after) == (16 << 20, 4, 3600.0)
    assert config.keys is not None and config.credential_command is None
    assert (config.keys.access_key, config.keys.secret_key) == ("AKIDEXAMPLE", "very-secret-value")


def test_keys_from_files(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").write_text("AKIDFILE\n")
    (tmp_path / "s").write_text("secret-from-file\nignored\n")
    table = s3(prefix="/eu/west/", local_max_size="2GiB", redirect=True, upload_part_size="8MiB")
    storage = table["storage"]
    del storage["access_key_env"], storage["secret_key_env"]
    storage.update(access_key_file=str(tmp_path / "a"), secret_key_file=str(tmp_path / "s"))
    config = parse_config(table, {}).storage.s3
    assert config is not None
    assert config.keys is not None
    assert (config.keys.access_key, config.keys.secret_key) == ("AKIDFILE", "secret-from-file")
    assert (config.prefix, config.local_max_size, config.redirect) == ("eu/west/", 2 << 30, True)
    assert config.upload_part_size == 8 << 20


def test_keys_never_appear_in_a_repr() -> None:
    config = parse_config(s3(), ENV)
    assert "very-secret-value" not in repr(config) and "AKIDEXAMPLE" not in repr(config)


@pytest.mark.parametrize(("extra", "environ", "message"), [
    ({"backend": "gcs"}, ENV, "storage.backend: 'gcs' must be 'filesystem' or 's3'"),
    ({"endpoint": "ftp://x"}, ENV, "storage.endpoint: 'ftp://x' must be an http:// or https:// URL with a host"),
    ({"endpoint": "http://key:secret@x"}, ENV, "storage.endpoint: must not contain credentials"),
    ({"bucket": "No_Such"}, ENV, "storage.bucket: 'No_Such' is not an S3 bucket name"),
    ({"region": "US EAST"}, ENV, "storage.region:"),
    ({"prefix": "a//b"}, ENV, "storage.prefix:"),
    ({"secret_key": "literal"}, ENV, "storage.secret_key: a literal secret is not accepted"),
    ({}, {"S3_ACCESS": "x"}, "storage.secret_key_env: environment variable 'S3_SECRET' is not set"),
    ({"access_key_file": "/nonexistent"}, ENV, "storage: set access_key_file and secret_key_file, or"),
    ({"ca_file": "/nonexistent.pem"}, ENV, "storage.ca_file: '/nonexistent.pem' is not a readable file"),
    ({"local_max_size": "1KiB"}, ENV, "storage.local_max_size: must be 0 (no local tier) or at least 1MiB"),
    ({"upload_part_size": "1MiB"}, ENV, "storage.upload_part_size: must be between 5MiB and 5GiB"),
    ({"max_part_uploads": 0}, ENV, "storage.max_part_uploads: must be between 1 and 64"),
    ({"abandon_uploads_after": "0s"}, ENV, "storage.abandon_uploads_after: must be positive"),
    ({"path_style": "yes"}, ENV, "storage.path_style: expected true or false"),
    ({"colour": "blue"}, ENV, "storage: unknown key(s): colour"),
])
def test_bad_keys_are_named(extra: dict[str, object], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(s3(**extra), environ)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "very-secret-value" not in str(raised.value)


def test_no_keys_at_all_is_refused() -> None:
    with pytest.raises(ConfigError, match="^storage: backend = 's3' needs access_key_file"):
        parse_config({"storage": {"backend": "s3", "endpoint": "http://h", "bucket": "bkt"}}, {})


def test_the_filesystem_backend_takes_no_s3_keys() -> None:
    with pytest.raises(ConfigError, match=r"^storage: unknown key\(s\): bucket"):
        parse_config({"storage": {"bucket": "ocicache"}}, {})


def test_the_example_file_documents_every_storage_key() -> None:
    text = (REPO / "etc" / "ocicache.toml").read_text()
    storage = text[text.index("[storage]"):text.index("[[upstream]]")]
    keys = set(attrs.fields_dict(S3Config)) - {"keys"} | {
        "backend", "access_key_file", "secret_key_file", "access_key_env", "secret_key_env"}
    for key in keys:
        assert re.search(rf"^(# )?{key} = ", storage, re.M), f"[storage] {key} is not in etc/ocicache.toml"


def test_keys_from_a_credential_program() -> None:
    table = s3(credential_helper="s3-keys", credential_ttl="5m")
    storage = table["storage"]
    del storage["access_key_env"], storage["secret_key_env"]
    config = parse_config(table, {}).storage.s3
    assert config is not None and config.keys is None and config.credential_command is not None
    assert config.credential_command.argv == ("docker-credential-s3-keys", "get")
    assert config.credential_command.ttl == 300.0


def test_keys_and_a_credential_program_are_refused_together() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(s3(credential_command=["/usr/bin/s3-keys"]), ENV)
    assert "not both" in str(raised.value)
