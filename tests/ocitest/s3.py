"""
A test's own bucket on the radosgw (L{ocitest.ceph}), seen through
botocore, a real S3 client: what is in it, what uploads are open, the
hash of an object; and the daemon's C{[storage]} table for it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .ceph import Radosgw
from .images import Blob

__all__ = ["Store"]

MiB = 1 << 20


class Store:
    """The test's bucket, seen through botocore (a real S3 client), and the daemon's [storage] table."""

    def __init__(self, radosgw: Radosgw, bucket: str, key_dir: str) -> None:
        import botocore.session

        self.bucket = bucket
        self.client: Any = botocore.session.get_session().create_client(
            "s3", endpoint_url=radosgw.url, region_name="us-east-1",
            aws_access_key_id=radosgw.access_key, aws_secret_access_key=radosgw.secret_key,
        )
        self.client.create_bucket(Bucket=bucket)
        os.makedirs(key_dir, exist_ok=True)
        access, secret = os.path.join(key_dir, "access"), os.path.join(key_dir, "secret")
        with open(access, "w") as f:
            f.write(radosgw.access_key + "\n")
        with open(secret, "w") as f:
            f.write(radosgw.secret_key + "\n")
        self.table: dict[str, object] = {
            "backend": "s3", "endpoint": radosgw.url, "bucket": bucket, "prefix": "oci",
            "access_key_file": access, "secret_key_file": secret, "upload_part_size": "5MiB",
        }

    def key(self, blob: Blob) -> str:
        return f"oci/blobs/sha256/{blob.hex}"

    def objects(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix="oci/")
        return [item["Key"] for item in listing.get("Contents", [])]

    def uploads(self) -> list[str]:
        listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix="oci/")
        return [item["Key"] for item in listing.get("Uploads", [])]

    def sha256(self, key: str) -> str:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        hasher = hashlib.sha256()
        while chunk := body.read(MiB):
            hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()
