"""
The admin API and C{ocicache ls|purge|pulls} (issue 22, part 3) on a
running daemon: what a pull left in the cache is listed with its sizes,
the pull log says who pulled which reference and digest, a purge by
reference, repository glob or digest removes what it names (the next
pull goes upstream again), eviction runs on demand, and an upstream is
switched offline and back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from ocitest import free_port, http_request
from ocitest.daemon import Daemon, daemon_env
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = {"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}


def _cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocicache", *args, "--config", daemon.config_path],
                          capture_output=True, text=True, timeout=60, env=daemon_env())


def _json(daemon: Daemon, *args: str) -> Any:
    result = _cli(daemon, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _pull(daemon: Daemon, image: Image, prefix: str = "") -> None:
    status, _, body = http_request(f"{daemon.url}/v2/{prefix}{image.repo}/manifests/{image.tag}", headers=ACCEPT)
    assert status == 200 and body == image.manifest_bytes
    for blob in image.blobs:
        status, _, body = http_request(f"{daemon.url}/v2/{prefix}{image.repo}/blobs/{blob.digest}")
        assert status == 200 and len(body) == blob.size


@pytest.fixture
def admin_daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    # protect_recent off: what a test just pulled may be purged and evicted.
    return daemon_factory(extra_tables={"metrics": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"}},
                          cache_extra={"protect_recent": "0s"})


def test_ls_and_pulls_say_what_is_cached_and_who_pulled_it(
    admin_daemon: Daemon, upstream: Registry, hop: Hop,
) -> None:
    oci, team = upstream.images["oci"], upstream.images["team"]
    _pull(admin_daemon, oci)
    _pull(admin_daemon, team, "ghcr.io/")

    repositories = {row["repository"]: row for row in _json(admin_daemon, "ls")}
    row = repositories[f"docker.io/{oci.repo}"]
    assert row["bytes"] == sum(blob.size for blob in oci.blobs) and row["blobs"] == len(oci.blobs)
    assert row["tags"] == 1 and row["last_used"] is not None
    assert repositories[f"ghcr.io/{team.repo}"]["bytes"] == sum(blob.size for blob in team.blobs)
    tags = _json(admin_daemon, "ls", "tags")
    assert {"repository": f"docker.io/{oci.repo}", "tag": oci.tag, "digest": oci.manifest_digest} \
        .items() <= next(t for t in tags if t["repository"] == f"docker.io/{oci.repo}").items()
    blobs = {row["digest"]: row for row in _json(admin_daemon, "ls", "blobs")}
    assert all(blobs[blob.digest]["bytes"] == blob.size for blob in oci.blobs)
    assert blobs[oci.blobs[0].digest]["repositories"] == [f"docker.io/{oci.repo}"]

    pulls = _json(admin_daemon, "pulls")["pulls"]
    assert [(p["who"], p["repository"], p["reference"], p["digest"]) for p in pulls] == [
        ("127.0.0.1", f"docker.io/{oci.repo}", oci.tag, oci.manifest_digest),
        ("127.0.0.1", f"ghcr.io/{team.repo}", team.tag, team.manifest_digest),
    ]
    text = _cli(admin_daemon, "pulls")
    assert f"127.0.0.1  docker.io/{oci.repo}:{oci.tag}  {oci.manifest_digest}" in text.stdout
    text = _cli(admin_daemon, "ls")
    assert f"docker.io/{oci.repo}  {len(oci.blobs)} blobs" in text.stdout


def test_purge_by_reference_glob_and_digest(admin_daemon: Daemon, upstream: Registry, hop: Hop) -> None:
    oci, team = upstream.images["oci"], upstream.images["team"]
    _pull(admin_daemon, oci)
    _pull(admin_daemon, team, "ghcr.io/")
    blob_dir = os.path.join(admin_daemon.cache_dir, "blobs")

    def stored(digest: str) -> bool:
        algorithm, hex_digest = digest.split(":")
        return any(hex_digest in names for _, _, names in os.walk(blob_dir))

    # A tag: the tag and its manifest go; the blobs stay.
    purged = _json(admin_daemon, "purge", f"docker.io/{oci.repo}:{oci.tag}")["purged"]
    assert (purged["tags"], purged["manifests"], purged["blobs"]) == (1, 1, 0)
    assert all(stored(blob.digest) for blob in oci.blobs)
    before = hop.count("GET", f"/manifests/{oci.tag}")
    _pull(admin_daemon, oci)
    assert hop.count("GET", f"/manifests/{oci.tag}") == before + 1

    # A glob: ghcr.io's team/* repositories, tags, manifests and blobs.
    purged = _json(admin_daemon, "purge", "--repository", "ghcr.io/team/*")["purged"]
    assert purged["tags"] == 1 and purged["blobs"] == len(team.blobs)
    assert purged["bytes"] == sum(blob.size for blob in team.blobs)
    assert not any(stored(blob.digest) for blob in team.blobs)
    assert all(stored(blob.digest) for blob in oci.blobs)
    assert f"ghcr.io/{team.repo}" not in {row["repository"] for row in _json(admin_daemon, "ls")}

    # A digest: one blob.
    blob = oci.blobs[-1]
    result = _cli(admin_daemon, "purge", "--digest", blob.digest)
    assert result.returncode == 0 and result.stdout.startswith("purged 0 tags, 0 manifests, 1 blobs")
    assert not stored(blob.digest)
    before = hop.count("GET", blob.digest)
    assert http_request(f"{admin_daemon.url}/v2/{oci.repo}/blobs/{blob.digest}")[0] == 200
    assert hop.count("GET", blob.digest) == before + 1

    # Refusals are one line.
    result = _cli(admin_daemon, "purge", "--digest", "sha256:nope")
    assert result.returncode == 1 and result.stderr.startswith("ocicache purge: 400 DIGEST_INVALID")


def test_evict_now_and_offline_through_the_api(admin_daemon: Daemon, upstream: Registry, hop: Hop) -> None:
    oci, team = upstream.images["oci"], upstream.images["team"]
    _pull(admin_daemon, oci)
    base = _operator(admin_daemon)
    before = {row["digest"]: row["bytes"] for row in _json(admin_daemon, "ls", "blobs")}
    status, _, body = http_request(f"{base}/admin/evict?to=0", method="POST")
    assert status == 200, body
    report = json.loads(body)
    after = {row["digest"]: row["bytes"] for row in _json(admin_daemon, "ls", "blobs")}
    gone = before.keys() - after.keys()
    # What the eviction policy chose (the least recently used first): the report says it all.
    assert report["evicted"] == len(gone) > 0
    assert report["evicted_bytes"] == sum(before[digest] for digest in gone)

    status, _, body = http_request(f"{base}/admin/upstreams?name=docker.io&offline=true", method="POST")
    assert status == 200 and json.loads(body) == {"name": "docker.io", "offline": True}
    status, _, body = http_request(f"{base}/admin/upstreams")
    states = {u["name"]: u["circuit"] for u in json.loads(body)["upstreams"]}
    assert states == {"docker.io": "offline", "ghcr.io": "closed"}
    calls = hop.count()
    status, _, body = http_request(f"{admin_daemon.url}/v2/{team.repo}/manifests/{team.tag}", headers=ACCEPT)
    assert status == 502 and b"docker.io is offline" in body
    assert hop.count() == calls
    http_request(f"{base}/admin/upstreams?name=docker.io&offline=false", method="POST")
    status, _, _ = http_request(f"{admin_daemon.url}/v2/{team.repo}/manifests/{team.tag}", headers=ACCEPT)
    assert status == 200


def _operator(daemon: Daemon) -> str:
    import tomllib

    with open(daemon.config_path, "rb") as f:
        listen = tomllib.load(f)["metrics"]["listen"]
    return f"http://127.0.0.1:{listen.split(':')[1]}"
