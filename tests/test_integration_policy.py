"""
The policy against the real daemon and a real docker-registry upstream:
a denied repository gets C{403 DENIED} on every route (manifest by tag
and by digest, blob GET and HEAD, tags/list), under every spelling of its
name, before any cache lookup or upstream request (the hop counts none);
include, exclude, tags and digest_only; C{[[rule]]}s for the anonymous
identity; and a digest asked through an allowed name is still proven.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable

import pytest

from ocitest import free_port, http_request
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.ops import metric_value, scrape

pytestmark = pytest.mark.integration

ACCEPT = {"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}


def routes(image: Image, name: str | None = None, query: str = "") -> list[tuple[str, str]]:
    """Every pull route of C{image}: (method, path), under C{name} (default: its short name)."""
    blob = (image.children[0] if image.children else image).blobs[0]
    name = name or image.short_name
    paths = [
        f"/v2/{name}/manifests/{image.tag}",
        f"/v2/{name}/manifests/{image.manifest_digest}",
        f"/v2/{name}/blobs/{blob.digest}",
        f"/v2/{name}/tags/list",
    ]
    return [(method, path + query) for path in paths for method in ("GET", "HEAD")
            if not (method == "HEAD" and path.endswith("/tags/list"))]


def assert_denied(daemon: Daemon, method: str, path: str) -> None:
    status, headers, body = http_request(daemon.url + path, method=method, headers=ACCEPT)
    assert status == 403, (method, path, status, body[:300])
    assert headers["content-type"] == "application/json"
    if method == "GET":
        error = json.loads(body)["errors"][0]
        assert error["code"] == "DENIED", error
        assert error["message"].startswith("denied by the mirror's policy: "), error


def assert_manifest(daemon: Daemon, path: str, image: Image) -> None:
    status, headers, body = http_request(daemon.url + path, headers=ACCEPT)
    assert status == 200, (path, body[:300])
    assert body == image.manifest_bytes
    assert headers["docker-content-digest"] == image.manifest_digest


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def guarded(daemon_factory: Callable[..., Daemon], hop: Hop, metrics_port: int) -> Daemon:
    metrics = {"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}}
    return daemon_factory(extra_tables=metrics, upstreams=[
        Upstream("docker.io", hop.url, default=True, extra={
            "include": ["ocitest-*", "team/**"],
            "exclude": ["library/ocitest-list"],
            "tags": ["v*"],
        }),
        Upstream("ghcr.io", hop.url, extra={"digest_only": True}),
    ])


def test_an_excluded_repository_is_denied_on_every_route_and_spelling(
    guarded: Daemon, hop: Hop, ocitest_images: dict[str, Image], metrics_port: int
) -> None:
    image = ocitest_images["list"]
    # "ocitest-list" and "library/ocitest-list" are one repository.
    spellings = (routes(image) + routes(image, name=image.repo) + routes(image, name=f"docker.io/{image.repo}")
                 + routes(image, query="?ns=docker.io"))
    for method, path in spellings:
        assert_denied(guarded, method, path)
    assert hop.count() == 0, hop.summary()
    metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    assert metric_value(metrics, "ocicache_policy_denied_total", upstream="docker.io",
                        rule="upstream[docker.io].exclude") == len(spellings)
    log = guarded.log_text()
    assert "upstream[docker.io].exclude" in log
    assert "Traceback" not in log


def test_include_and_tag_patterns(guarded: Daemon, hop: Hop, ocitest_images: dict[str, Image]) -> None:
    oci, team = ocitest_images["oci"], ocitest_images["team"]
    assert_manifest(guarded, f"/v2/ocitest-oci/manifests/{oci.tag}", oci)
    assert_manifest(guarded, f"/v2/{team.repo}/manifests/{team.tag}", team)
    blob = oci.blobs[-1]
    status, _, body = http_request(f"{guarded.url}/v2/library/ocitest-oci/blobs/{blob.digest}")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
    before = hop.count()
    # Not included: every route; a tag outside "v*": by tag only.
    for method, path in routes(oci, name="elsewhere/ocitest-oci"):
        assert_denied(guarded, method, path)
    assert_denied(guarded, "GET", "/v2/ocitest-oci/manifests/latest")
    assert_denied(guarded, "HEAD", "/v2/ocitest-oci/manifests/latest")
    assert hop.count() == before, hop.summary()
    assert_manifest(guarded, f"/v2/ocitest-oci/manifests/{oci.manifest_digest}", oci)
    assert "upstream[docker.io].include" in guarded.log_text()
    assert "upstream[docker.io].tags" in guarded.log_text()


def test_digest_only_serves_digests_and_refuses_tags(
    guarded: Daemon, hop: Hop, ocitest_images: dict[str, Image]
) -> None:
    oci = ocitest_images["oci"]
    for prefix, query in (("ghcr.io/", ""), ("", "?ns=ghcr.io")):
        name = f"{prefix}{oci.repo}"
        assert_denied(guarded, "GET", f"/v2/{name}/manifests/{oci.tag}{query}")
        assert_denied(guarded, "HEAD", f"/v2/{name}/manifests/{oci.tag}{query}")
        assert_denied(guarded, "GET", f"/v2/{name}/tags/list{query}")
    assert hop.count() == 0, hop.summary()
    assert_manifest(guarded, f"/v2/ghcr.io/{oci.repo}/manifests/{oci.manifest_digest}", oci)
    blob = oci.blobs[0]
    status, _, body = http_request(f"{guarded.url}/v2/ghcr.io/{oci.repo}/blobs/{blob.digest}")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
    assert "upstream[ghcr.io].digest_only" in guarded.log_text()


def test_a_digest_through_an_allowed_name_is_still_proven(
    guarded: Daemon, hop: Hop, ocitest_images: dict[str, Image]
) -> None:
    # The excluded repository's layer gets into the cache by digest
    # through ghcr.io (digest_only, not excluded there) ...
    listed = ocitest_images["list"].children[0]
    blob = listed.blobs[-1]
    status, _, body = http_request(f"{guarded.url}/v2/ghcr.io/{listed.repo}/blobs/{blob.digest}")
    assert status == 200 and len(body) == blob.size
    # ... and asking for it under an allowed docker.io name does not
    # serve it: that repository must show the upstream holds it, and it
    # does not.
    status, _, body = http_request(f"{guarded.url}/v2/ocitest-oci/blobs/{blob.digest}")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert hop.count("HEAD", f"/library/ocitest-oci/blobs/{blob.digest}") == 1


def test_rules_for_the_anonymous_identity(
    daemon_factory: Callable[..., Daemon], hop: Hop, ocitest_images: dict[str, Image]
) -> None:
    daemon = daemon_factory(rules=[
        {"name": "no ghcr for anonymous", "identity": "anonymous", "action": "deny", "upstreams": ["ghcr.io"]},
        {"identity": "anonymous", "repositories": ["team/**", "ocitest-oci"]},
    ])
    oci, team, index = ocitest_images["oci"], ocitest_images["team"], ocitest_images["index"]
    assert_manifest(daemon, f"/v2/{team.repo}/manifests/{team.tag}", team)
    assert_manifest(daemon, f"/v2/library/ocitest-oci/manifests/{oci.tag}", oci)
    before = hop.count()
    for method, path in routes(index):
        assert_denied(daemon, method, path)
    for method, path in routes(team, name=f"ghcr.io/{team.repo}"):
        assert_denied(daemon, method, path)
    assert hop.count() == before, hop.summary()
    log = daemon.log_text()
    assert "Denied anonymous tag of docker.io/library/ocitest-index: no rule matched" in log
    assert "rule[0] (no ghcr for anonymous)" in log


def test_skopeo_is_told_it_is_denied(guarded: Daemon, skopeo: str, ocitest_images: dict[str, Image]) -> None:
    image = ocitest_images["list"]
    result = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{guarded.host}/{image.short_name}:{image.tag}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "denied" in result.stderr.lower(), result.stderr
    allowed = ocitest_images["oci"]
    result = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", "--raw",
         f"docker://{guarded.host}/{allowed.short_name}:{allowed.tag}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == allowed.manifest_bytes
