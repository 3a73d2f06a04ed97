"""
The S3 backend (C{[storage] backend = "s3"}) against a real radosgw, with
distribution behind the counting hop as the upstream and the real daemon:
a download streams into a multipart upload completed only once verified;
a failed one leaves nothing; a second node serves from the bucket alone;
redirects; the janitor aborts abandoned uploads; eviction deletes
objects; and with radosgw stopped, pulls pass through from the upstream.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.parse
import urllib.request
from collections.abc import Callable

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.ceph import Radosgw
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.images import Blob, Image
from ocitest.s3 import Store

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def store(radosgw: Radosgw, bucket_name: str, tmp_path: os.PathLike[str]) -> Store:
    return Store(radosgw, bucket_name, os.path.join(str(tmp_path), "keys"))


def _node(daemon_factory: Callable[..., Daemon], store: Store, cache: dict[str, object] | None = None,
          metrics_port: int | None = None, **storage: object) -> Daemon:
    tables: dict[str, dict[str, object]] = {"storage": {**store.table, **storage}}
    if metrics_port is not None:
        tables["metrics"] = {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}
    return daemon_factory(cache_extra=cache, extra_tables=tables)


def _layer(image: Image) -> Blob:
    return max(image.layers, key=lambda b: b.size)


def _url(daemon: Daemon, image: Image, blob: Blob) -> str:
    return f"{daemon.url}/v2/docker.io/{image.repo}/blobs/{blob.digest}"


def _upstream_gets(hop: Hop, blob: Blob) -> int:
    return hop.count("GET", blob.digest)


def test_a_cold_pull_appears_in_the_bucket_only_once_verified(
        daemon_factory: Callable[..., Daemon], store: Store, ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["big64"]
    blob = _layer(image)
    daemon = _node(daemon_factory, store)
    hop.throttle = 16 * MiB  # about 4 s: long enough to look at the bucket meanwhile
    parts = urllib.parse.urlsplit(daemon.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    conn.request("GET", urllib.parse.urlsplit(_url(daemon, image, blob)).path)
    response = conn.getresponse()
    assert response.status == 200
    hasher = hashlib.sha256(response.read(MiB))
    wait_for(lambda: hop.bytes_sent_for(blob.digest) >= 24 * MiB, timeout=30, what="half the body upstream")
    # Parts are going up while the client reads, but nothing is an object yet.
    assert store.uploads() == [store.key(blob)]
    assert store.objects() == []
    while chunk := response.read(MiB):
        hasher.update(chunk)
    conn.close()
    assert "sha256:" + hasher.hexdigest() == blob.digest
    wait_for(lambda: store.objects() == [store.key(blob)], timeout=30, what="the object completed")
    assert store.uploads() == []
    assert store.sha256(store.key(blob)) == blob.digest
    assert _upstream_gets(hop, blob) == 1


def test_a_body_cut_mid_stream_leaves_no_object_and_no_upload(
        daemon_factory: Callable[..., Daemon], store: Store, ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["big64"]
    blob = _layer(image)
    metrics_port = free_port()
    daemon = _node(daemon_factory, store, metrics_port=metrics_port)
    hop.fail_mid_stream(after_bytes=20 * MiB, path_contains=blob.digest, times=1)
    parts = urllib.parse.urlsplit(daemon.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    conn.request("GET", urllib.parse.urlsplit(_url(daemon, image, blob)).path)
    response = conn.getresponse()
    received = 0
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while chunk := response.read(MiB):
            received += len(chunk)
    conn.close()
    assert received < blob.size
    wait_for(lambda: store.uploads() == [], timeout=30, what="the upload aborted")
    assert store.objects() == []
    # The next pull fetches it again, and this time it is stored.
    status, _, body = http_request(_url(daemon, image, blob), timeout=60)
    assert status == 200 and hashlib.sha256(body).hexdigest() == blob.hex
    wait_for(lambda: store.objects() == [store.key(blob)], timeout=30, what="the object completed")
    def metrics() -> str:
        return http_request(f"http://127.0.0.1:{metrics_port}/metrics")[2].decode()

    wait_for(lambda: 'ocicache_s3_uploads_total{outcome="completed"} 1.0' in metrics(), timeout=10,
             what="the completed upload counted")
    text = metrics()
    assert 'ocicache_s3_uploads_total{outcome="aborted"} 1.0' in text
    uploaded = [float(line.split()[-1]) for line in text.splitlines()
                if line.startswith('ocicache_s3_bytes_total{direction="uploaded"}')]
    # The whole blob, plus the parts of the failed attempt (whole 5 MiB parts of its 20 MiB).
    assert uploaded and blob.size <= uploaded[0] <= blob.size + 20 * MiB
    # The store's gauges count the bucket's object, not the local disk's tier.
    gauges = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("ocicache_s3_store_", "ocicache_cache_size_bytes"))}
    assert gauges["ocicache_s3_store_bytes"] == blob.size and gauges["ocicache_s3_store_blobs"] == 1, gauges


def test_a_second_node_serves_the_bucket_without_the_upstream(
        daemon_factory: Callable[..., Daemon], store: Store, radosgw: Radosgw,
        ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["big64"]
    blob = _layer(image)
    first = _node(daemon_factory, store)
    status, _, body = http_request(_url(first, image, blob), timeout=60)
    assert status == 200 and hashlib.sha256(body).hexdigest() == blob.hex
    wait_for(lambda: store.objects() == [store.key(blob)], timeout=30, what="the object completed")
    first.stop()
    gets = _upstream_gets(hop, blob)

    second = _node(daemon_factory, store)  # an empty cache directory of its own
    status, headers, body = http_request(_url(second, image, blob), timeout=60)
    assert status == 200 and headers["content-length"] == str(blob.size)
    assert hashlib.sha256(body).hexdigest() == blob.hex
    status, headers, body = http_request(_url(second, image, blob), headers={"Range": "bytes=40000000-40000999"})
    assert status == 206
    assert headers["content-range"] == f"bytes 40000000-40000999/{blob.size}"
    assert body == blob.read_range(40000000, 40001000)
    # The range was passed through: S3 was asked from the client's offset
    # (radosgw logs a request once it is done: the stopped body, soon).
    def ranged() -> list[str]:
        return [line for line in radosgw.access_log()
                if f'"GET /{store.bucket}/{store.key(blob)} HTTP/1.1" 206' in line and "bytes=40000000-" in line]

    wait_for(lambda: len(ranged()) == 1, timeout=20, what="radosgw's log of the ranged GET")
    status, headers, body = http_request(_url(second, image, blob), headers={"Range": "bytes=-100"})
    assert status == 206 and body == blob.read_range(blob.size - 100, blob.size)
    status, headers, _ = http_request(_url(second, image, blob), method="HEAD")
    assert status == 200 and headers["content-length"] == str(blob.size)
    assert _upstream_gets(hop, blob) == gets, hop.summary()


def _local_file(daemon: Daemon, blob: Blob) -> str:
    return os.path.join(daemon.cache_dir, "blobs", "sha256", blob.hex[:2], blob.hex)


def test_the_local_tier_is_filled_from_the_bucket(
        daemon_factory: Callable[..., Daemon], store: Store, ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["oci"]
    blob = _layer(image)
    without = _node(daemon_factory, store)
    assert http_request(_url(without, image, blob))[0] == 200
    wait_for(lambda: store.objects() == [store.key(blob)], timeout=30, what="the object completed")
    # local_max_size unset: no local tier, nothing kept beside the bucket.
    assert not os.path.exists(_local_file(without, blob))
    with_tier = _node(daemon_factory, store, local_max_size="100MiB")
    status, _, body = http_request(_url(with_tier, image, blob))
    assert status == 200 and body == blob.data
    wait_for(lambda: os.path.exists(_local_file(with_tier, blob)), timeout=10, what="the local copy")
    with open(_local_file(with_tier, blob), "rb") as f:
        assert f.read() == blob.data
    assert _upstream_gets(hop, blob) == 1


def test_an_object_that_does_not_match_its_digest_is_cut_and_deleted(
        daemon_factory: Callable[..., Daemon], store: Store, ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["oci"]
    blob = _layer(image)
    # Corrupt at rest: the right length, other bytes.
    store.client.put_object(Bucket=store.bucket, Key=store.key(blob), Body=bytes(blob.size))
    daemon = _node(daemon_factory, store)
    parts = urllib.parse.urlsplit(_url(daemon, image, blob))
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    conn.request("GET", parts.path)
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    conn.close()
    assert _upstream_gets(hop, blob) == 0
    wait_for(lambda: store.objects() == [], timeout=10, what="the corrupt object deleted")
    status, _, body = http_request(_url(daemon, image, blob))
    assert status == 200 and body == blob.data
    wait_for(lambda: store.objects() == [store.key(blob)], timeout=30, what="the object stored again")
    assert store.sha256(store.key(blob)) == blob.digest


def test_redirect_sends_clients_to_a_presigned_url(
        daemon_factory: Callable[..., Daemon], store: Store, ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["oci"]
    blob = _layer(image)
    daemon = _node(daemon_factory, store, redirect=True)
    # Not in the bucket yet: served here, and stored.
    status, _, body = http_request(_url(daemon, image, blob))
    assert status == 200 and body == blob.data
    wait_for(lambda: store.objects() == [store.key(blob)], timeout=30, what="the object completed")
    status, headers, body = http_request(_url(daemon, image, blob))
    assert status == 307 and body == b""
    location = headers["location"]
    assert location.startswith(store.client.meta.endpoint_url) and "X-Amz-Signature=" in location
    with urllib.request.urlopen(location, timeout=10) as answer:
        assert answer.read() == blob.data
    assert _upstream_gets(hop, blob) == 1


def test_the_janitor_aborts_abandoned_uploads(
        daemon_factory: Callable[..., Daemon], store: Store) -> None:
    # What a node killed mid-download leaves: an upload with a part, never completed.
    key = "oci/blobs/sha256/" + hashlib.sha256(b"never completed").hexdigest()
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
    store.client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * (5 * MiB))
    outside = store.client.create_multipart_upload(Bucket=store.bucket, Key="elsewhere/not-ours")["UploadId"]
    assert store.uploads() == [key]
    _node(daemon_factory, store, cache={"janitor_interval": "1s"}, abandon_uploads_after="1s")
    wait_for(lambda: store.uploads() == [], timeout=30, what="the abandoned upload aborted")
    # Only under the prefix: another user of the bucket is left alone.
    others = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert [item["UploadId"] for item in others] == [outside]


def test_a_node_killed_mid_download_leaves_an_upload_the_janitor_aborts(
        daemon_factory: Callable[..., Daemon], store: Store, ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["big64"]
    blob = _layer(image)
    filler = _node(daemon_factory, store)
    hop.throttle = 16 * MiB
    parts = urllib.parse.urlsplit(filler.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    conn.request("GET", urllib.parse.urlsplit(_url(filler, image, blob)).path)
    assert conn.getresponse().status == 200
    wait_for(lambda: hop.bytes_sent_for(blob.digest) >= 12 * MiB, timeout=30, what="parts on their way")
    assert filler.proc is not None
    filler.proc.kill()
    filler.proc.wait(timeout=10)
    filler.stop()  # reaped: a death this test caused
    conn.close()
    hop.throttle = None
    assert store.uploads() == [store.key(blob)] and store.objects() == []
    other = _node(daemon_factory, store, cache={"janitor_interval": "1s"}, abandon_uploads_after="2s")
    wait_for(lambda: store.uploads() == [], timeout=30, what="the dead node's upload aborted")
    assert store.objects() == []
    # Clients retrying get the right bytes, and this time it is stored.
    status, _, body = http_request(_url(other, image, blob), timeout=60)
    assert status == 200 and hashlib.sha256(body).hexdigest() == blob.hex
    wait_for(lambda: store.objects() == [store.key(blob)], timeout=30, what="the object completed")


def test_eviction_and_expiry_delete_objects(
        daemon_factory: Callable[..., Daemon], store: Store, ocitest_images: dict[str, Image], hop: Hop) -> None:
    oci, big1 = ocitest_images["oci"], ocitest_images["big1"]
    first, second = _layer(oci), _layer(big1)
    daemon = _node(daemon_factory, store, cache={"max_size": "1200KiB"})
    assert http_request(_url(daemon, oci, first))[0] == 200
    wait_for(lambda: store.objects() == [store.key(first)], timeout=30, what="the first object")
    # The second does not fit beside the first in max_size: the first goes.
    assert http_request(_url(daemon, big1, second))[0] == 200
    wait_for(lambda: store.objects() == [store.key(second)], timeout=30, what="the first object evicted")
    daemon.stop()

    expiring = _node(daemon_factory, store, cache={"janitor_interval": "1s", "blob_ttl": "2s"})
    wait_for(lambda: store.objects() == [], timeout=30, what="the unread object expired")
    assert expiring.running


def test_with_radosgw_stopped_pulls_pass_through_and_readyz_says_why(
        daemon_factory: Callable[..., Daemon], store: Store, radosgw: Radosgw,
        ocitest_images: dict[str, Image], hop: Hop) -> None:
    image = ocitest_images["oci"]
    stored, other = _layer(image), image.layers[0]
    metrics_port = free_port()
    daemon = _node(daemon_factory, store, metrics_port=metrics_port)
    ready = f"http://127.0.0.1:{metrics_port}/readyz"
    assert http_request(_url(daemon, image, stored))[0] == 200
    wait_for(lambda: store.objects() == [store.key(stored)], timeout=30, what="the object completed")
    assert http_request(ready)[0] == 200
    radosgw.stop_gateway()
    try:
        # In the bucket's index, but the bucket is gone: the upstream serves it.
        status, _, body = http_request(_url(daemon, image, stored))
        assert status == 200 and body == stored.data
        status, _, body = http_request(_url(daemon, image, other))
        assert status == 200 and body == other.data
        status, _, said = http_request(ready)
        assert status == 503 and b"S3 store" in said and store.bucket.encode() in said
        assert _upstream_gets(hop, stored) == 2
    finally:
        radosgw.start_gateway()
    wait_for(lambda: http_request(_url(daemon, image, other))[0] == 200 and http_request(ready)[0] == 200,
             timeout=30, interval=1.0, what="ready again once radosgw is back")
    log = daemon.log_text()
    assert "Traceback" not in log
    assert log.count("is unavailable") == 1


def test_the_keys_can_come_from_a_credential_program(
        daemon_factory: Callable[..., Daemon], store: Store, radosgw: Radosgw,
        ocitest_images: dict[str, Image], hop: Hop, tmp_path: os.PathLike[str]) -> None:
    """
    C{credential_command} instead of key files: the docker-credential-helpers
    protocol, C{Username} the access key and C{Secret} the secret.
    """
    image = ocitest_images["oci"]
    blob = _layer(image)
    runs = os.path.join(str(tmp_path), "runs")
    program = os.path.join(str(tmp_path), "s3-keys")
    with open(program, "w") as f:
        f.write("#!/bin/sh\n"
                f"read server; echo \"$server\" >> {runs}\n"
                f"printf '{{\"Username\": \"%s\", \"Secret\": \"%s\"}}' "
                f"'{radosgw.access_key}' '{radosgw.secret_key}'\n")
    os.chmod(program, 0o755)
    table = {key: value for key, value in store.table.items() if not key.endswith("_key_file")}
    daemon = daemon_factory(extra_tables={"storage": {**table, "credential_command": [program]}})
    status, _, body = http_request(_url(daemon, image, blob), timeout=60)
    assert status == 200 and body == blob.data
    wait_for(lambda: store.objects() == [store.key(blob)], timeout=30, what="the object completed")
    assert store.sha256(store.key(blob)) == blob.digest
    with open(runs) as f:
        assert f.read().splitlines()[0] == radosgw.url  # the store's URL on its standard input
    assert radosgw.secret_key not in daemon.log_text()


def test_concurrent_cold_gets_cost_each_node_one_upstream_fetch(
        daemon_factory: Callable[..., Daemon], store: Store, ocitest_images: dict[str, Image], hop: Hop) -> None:
    """
    Two nodes on one bucket, no fleet, four concurrent cold GETs per node,
    over many blobs: each node fetches a digest once, so the upstream
    sees at most two GETs per blob.  The old lookup could start a second
    fetch when a client's bucket C{HEAD} came back after another's fetch
    of the same digest had started (issue 19, item 6).
    """
    import concurrent.futures

    nodes = [_node(daemon_factory, store), _node(daemon_factory, store)]
    blobs = [(image, blob) for name in ("oci", "team", "big1") for image in [ocitest_images[name]]
             for blob in image.blobs]

    def get(url: str) -> tuple[int, str]:
        status, _, body = http_request(url, timeout=60)
        return status, "sha256:" + hashlib.sha256(body).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for image, blob in blobs:
            urls = [_url(node, image, blob) for node in nodes for _ in range(4)]
            answers = list(pool.map(get, urls))
            assert answers == [(200, blob.digest)] * len(urls)
            assert _upstream_gets(hop, blob) <= len(nodes), hop.summary()
