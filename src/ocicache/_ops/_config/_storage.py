"""
The schema of C{[storage]}: the filesystem backend (the default, and no
other key), or C{backend = "s3"} with its endpoint, bucket and keys.
"""

from __future__ import annotations

import re

from attrs import frozen
from hyperlink import DecodedURL

from ._fields import key
from ._names import HttpURL
from ._secrets import Files
from ._types import BOOLEAN, POSITIVE, Choice, Integer, Invalid, Refused, Size, Text
from ._upstream import CredentialProgram
from ._values import S3Config, S3Keys, StorageConfig

__all__ = ["FilesystemTable", "S3Table", "storage_table"]

_S3 = S3Config(DecodedURL.from_text("http://defaults"), "", None)
_BACKEND = Choice(("filesystem", "s3"))
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
"""S3's bucket naming rules (3 to 63 lowercase letters, digits, dots, hyphens)."""
_KEY_FILES = "access_key_file and secret_key_file"


def _prefix(text: str) -> bool:
    parts = text.strip("/").split("/")
    return not text.strip("/") or all(part and part not in (".", "..") for part in parts)


@frozen
class FilesystemTable:
    """The filesystem backend: blobs under [cache] dir."""

    backend: str = key(_BACKEND, '"filesystem" or "s3".', default="filesystem")

    def check(self) -> None:
        pass

    def build(self, files: Files, where: str) -> StorageConfig:
        return StorageConfig()


@frozen
class S3Table(CredentialProgram):
    """
    Where blobs live. "filesystem" (the default): under [cache] dir, and no
    other key here. "s3": in an S3 bucket (radosgw, MinIO, AWS...), shared
    by every node that names it; [cache] max_size and blob_ttl then apply to
    the bucket. Manifests, tags and the metadata stay under [cache] dir.
    """

    backend: str = key(_BACKEND, '"filesystem" or "s3".', default="filesystem", commented=False)
    endpoint: DecodedURL | None = key(
        HttpURL("access_key_file or access_key_env"), "The S3 endpoint.", example="https://s3.internal:7480",
        required="for backend = 's3' (e.g. 'https://s3.example.com')")
    bucket: str | None = key(Text(lambda text: _BUCKET_NAME.fullmatch(text) and ".." not in text,
                                  "{value} is not an S3 bucket name"), "The bucket.", example="ocicache",
                             required="for backend = 's3'")
    region: str = key(Text(re.compile(r"[a-z0-9-]{1,64}").fullmatch, "{value} is not a region name such as"
                           " 'us-east-1'"), "What the SigV4 signature names.", default=_S3.region)
    prefix: str = key(Text(_prefix, "must be key segments separated by '/', such as 'ocicache/eu'"),
                      "Every key starts with this (then blobs/sha256/<hex>).", default="", example="eu-west")
    access_key_file: str | None = key(Text(), "A file whose first line is the access key.",
                                      example="/etc/ocicache/s3.access",
                                      note="""The key pair, from two files (first line of each) or two environment
variables; a literal key is refused, and neither is ever logged.""")
    secret_key_file: str | None = key(Text(), "A file whose first line is the secret key.",
                                      example="/etc/ocicache/s3.secret")
    access_key_env: str | None = key(Text(), "An environment variable holding the access key.",
                                     example="OCICACHE_S3_ACCESS_KEY")
    secret_key_env: str | None = key(Text(), "An environment variable holding the secret key.",
                                     example="OCICACHE_S3_SECRET_KEY")
    access_key: None = key(Refused("a literal secret is not accepted; use access_key_file or access_key_env"), "")
    secret_key: None = key(Refused("a literal secret is not accepted; use secret_key_file or secret_key_env"), "")
    path_style: bool = key(BOOLEAN, "http://host/bucket/key (true) or http://bucket.host/key (false).",
                           default=_S3.path_style)
    tls_verify: bool = key(BOOLEAN, "Verify the endpoint's certificate.", default=_S3.tls_verify)
    ca_file: str | None = key(Text(), "A private CA for the endpoint (PEM).", example="/etc/ocicache/s3-ca.pem")
    local_max_size: int = key(
        Size(1 << 20, zero=True, refusal="must be 0 (no local tier) or at least 1MiB"),
        "What is kept on the local disk too (read-through; blobs, git responses and files in one budget);"
        " 0: none.", default=_S3.local_max_size,
        example="20GiB")
    redirect: bool = key(BOOLEAN, "Blob GETs get a 307 to a presigned URL (valid 20 minutes).",
                         default=_S3.redirect)
    upload_part_size: int = key(Size(5 << 20, 5 << 30, "must be between 5MiB and 5GiB (S3's part limits)"),
                                "A download streams into a multipart upload in parts of this size.",
                                default=_S3.upload_part_size)
    max_part_uploads: int = key(Integer(1, 64, "must be between 1 and 64"),
                                "Parts in flight, all downloads together.", default=_S3.max_part_uploads)
    abandon_uploads_after: float = key(POSITIVE,
                                       "Multipart uploads older than this (a node killed mid-download) are aborted.",
                                       default=_S3.abandon_uploads_after)

    def check(self) -> None:
        self.check_program()
        given = {way for way in ("file", "env") for name in ("access_key", "secret_key")
                 if getattr(self, f"{name}_{way}") is not None}
        if len(given) > 1:
            raise Invalid(f"set {_KEY_FILES}, or the _env pair, not both")
        if given and self.has_program:
            raise Invalid("set the key files or variables, or credential_helper or credential_command, not both")
        if not given and not self.has_program:
            raise Invalid(f"backend = 's3' needs {_KEY_FILES}, access_key_env and secret_key_env,"
                          " or credential_helper or credential_command")

    def build(self, files: Files, where: str) -> StorageConfig:
        assert self.endpoint is not None and self.bucket is not None
        keys = None
        if not self.has_program:
            access = files.secret("access_key", self.access_key_file, self.access_key_env)
            secret = files.secret("secret_key", self.secret_key_file, self.secret_key_env)
            if access is None or secret is None:
                missing = "access_key" if access is None else "secret_key"
                raise Invalid(f"required (or {missing}_env)", (f"{missing}_file",))
            keys = S3Keys(access, secret)
        prefix = self.prefix.strip("/")
        return StorageConfig("s3", S3Config(
            endpoint=self.endpoint, bucket=self.bucket, keys=keys, region=self.region,
            prefix=f"{prefix}/" if prefix else "", path_style=self.path_style, tls_verify=self.tls_verify,
            ca_file=files.readable("ca_file", self.ca_file), local_max_size=self.local_max_size,
            redirect=self.redirect, upload_part_size=self.upload_part_size, max_part_uploads=self.max_part_uploads,
            abandon_uploads_after=self.abandon_uploads_after, credential_command=self.program(self.endpoint)))


def storage_table(value: object) -> type[FilesystemTable] | type[S3Table]:
    """The schema for C{[storage]}: the S3 keys only with C{backend = "s3"}."""
    if isinstance(value, dict) and value.get("backend") == "s3":
        return S3Table
    return FilesystemTable
