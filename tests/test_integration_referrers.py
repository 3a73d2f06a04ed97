"""
Referrers (distribution-spec "Listing Referrers") through the real daemon:

  - from an upstream with the API (L{ocitest.referrers}, since distribution
    2.8 has none): passed through, cached for C{referrers_ttl}, one
    upstream request for many clients, C{artifactType} and
    C{OCI-Filters-Applied} kept, C{Link} pointing back at ocicache, stale
    when the upstream is gone;
  - from distribution 2.8.2, which has no referrers API: a signature and an
    SBOM pushed with a C{subject} and listed under the fallback tag
    C{sha256-<hex>} (as cosign and notation do on such a registry) are
    listed and fetched through ocicache;
  - an empty index, never a 404, when there are none.

Debian ships none of cosign, notation or oras, so the artifacts are pushed
with the harness's own pusher (L{ocitest.registry}).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

import pytest

from ocitest import http_request
from ocitest.daemon import Daemon, Upstream
from ocitest.hop import Hop
from ocitest.images import Blob, Image, sha256_digest
from ocitest.referrers import IMAGE_INDEX, ReferrersUpstream
from ocitest.registry import Registry, push_blob, push_image, push_manifest

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"


def _q(media_type: str) -> str:
    # As clients send it: a "+" left bare would read as a space.
    return urllib.parse.quote(media_type, safe="/")


def _digest(seed: str) -> str:
    return sha256_digest(seed.encode())


def _descriptor(seed: str, artifact_type: str) -> dict[str, object]:
    return {"mediaType": OCI_MANIFEST, "digest": _digest(seed), "size": 500 + len(seed),
            "artifactType": artifact_type}


@pytest.fixture
def api() -> Iterator[ReferrersUpstream]:
    upstream = ReferrersUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


def _api_daemon(daemon_factory: Callable[..., Daemon], api: ReferrersUpstream, ttl: str = "5m") -> Daemon:
    return daemon_factory(upstreams=[Upstream("docker.io", api.url, default=True)],
                          cache_extra={"referrers_ttl": ttl})


def _manifests(body: bytes) -> list[dict[str, object]]:
    document = json.loads(body)
    assert document["schemaVersion"] == 2 and document["mediaType"] == IMAGE_INDEX
    entries = document["manifests"]
    assert isinstance(entries, list)
    return entries


# -- an upstream with the referrers API


def test_a_listing_is_passed_through_once_for_many_clients_and_reused(
        daemon_factory: Callable[..., Daemon], api: ReferrersUpstream) -> None:
    subject = _digest("subject-a")
    listed = [_descriptor("sig-a", SIGNATURE), _descriptor("sbom-a", SBOM)]
    api.referrers[("library/app", subject)] = listed
    api.delay = 0.5
    daemon = _api_daemon(daemon_factory, api)
    url = daemon.url + f"/v2/docker.io/library/app/referrers/{subject}"
    results: list[tuple[int, dict[str, str], bytes]] = []

    def client() -> None:
        results.append(http_request(url))

    threads = [threading.Thread(target=client) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 20
    assert {status for status, _, _ in results} == {200}
    assert {headers["content-type"] for _, headers, _ in results} == {IMAGE_INDEX}
    assert len({body for _, _, body in results}) == 1
    assert _manifests(results[0][2]) == listed
    assert "oci-filters-applied" not in results[0][1]
    assert api.count("/referrers/") == 1
    # Within referrers_ttl: no upstream request at all.
    status, _, body = http_request(url)
    assert status == 200 and body == results[0][2]
    assert api.count("/referrers/") == 1


def test_artifact_type_is_passed_upstream_and_its_filter_kept(
        daemon_factory: Callable[..., Daemon], api: ReferrersUpstream) -> None:
    subject = _digest("subject-b")
    api.referrers[("library/app", subject)] = [_descriptor("sig-b", SIGNATURE), _descriptor("sbom-b", SBOM)]
    daemon = _api_daemon(daemon_factory, api)
    url = daemon.url + f"/v2/library/app/referrers/{subject}?artifactType=application/spdx%2Bjson"
    status, headers, body = http_request(url)
    assert status == 200, body
    assert headers["oci-filters-applied"] == "artifactType"
    assert [entry["artifactType"] for entry in _manifests(body)] == [SBOM]
    assert api.queries("/referrers/") == [{"artifactType": [SBOM]}]
    # An upstream that ignores the filter (the spec allows it): ocicache
    # applies it, and says so.
    api.filters = False
    other = _digest("subject-b2")
    api.referrers[("library/app", other)] = [_descriptor("sig-b2", SIGNATURE), _descriptor("sbom-b2", SBOM)]
    status, headers, body = http_request(
        daemon.url + f"/v2/library/app/referrers/{other}?artifactType={_q(SIGNATURE)}")
    assert status == 200, body
    assert headers["oci-filters-applied"] == "artifactType"
    assert [entry["digest"] for entry in _manifests(body)] == [_digest("sig-b2")]


def test_pagination_links_point_back_at_ocicache_under_the_clients_name(
        daemon_factory: Callable[..., Daemon], api: ReferrersUpstream) -> None:
    subject = _digest("subject-c")
    listed = [_descriptor(f"sig-c{i}", SIGNATURE) for i in range(5)]
    api.referrers[("library/app", subject)] = listed
    api.page_size = 2
    daemon = _api_daemon(daemon_factory, api)
    seen: list[dict[str, object]] = []
    target = f"/v2/app/referrers/{subject}?ns=docker.io&artifactType={_q(SIGNATURE)}"
    pages = 0
    while target:
        status, headers, body = http_request(daemon.url + target)
        assert status == 200, body
        assert headers["oci-namespace"] == "docker.io"
        assert headers["oci-filters-applied"] == "artifactType"
        seen += _manifests(body)
        pages += 1
        link = headers.get("link")
        if link is None:
            break
        assert link.startswith(f"</v2/app/referrers/{subject}?") and link.endswith('>; rel="next"'), link
        assert "ns=docker.io" in link and api.url not in link and "127.0.0.1" not in link
        target = link[1:link.index(">")]
    assert seen == listed
    assert pages == 3
    # Each page was one upstream request, with the upstream's own cursor.
    assert api.count("/referrers/") == 3
    assert [query.get("last") for query in api.queries("/referrers/")] == [
        None, [_digest("sig-c1")], [_digest("sig-c3")]]


def test_a_stopped_upstream_gets_the_last_listing(
        daemon_factory: Callable[..., Daemon], api: ReferrersUpstream) -> None:
    subject = _digest("subject-d")
    api.referrers[("library/app", subject)] = [_descriptor("sig-d", SIGNATURE)]
    daemon = _api_daemon(daemon_factory, api, ttl="1s")
    url = daemon.url + f"/v2/library/app/referrers/{subject}"
    status, _, before = http_request(url)
    assert status == 200
    time.sleep(1.2)  # past referrers_ttl: the next request asks the upstream
    api.stop()  # connections refused
    status, _, body = http_request(url)
    assert status == 200 and body == before
    log = daemon.log_text()
    assert "Serving stale referrers" in log and "ConnectionRefusedError" in log
    # A listing never seen has nothing to fall back on.
    status, _, body = http_request(daemon.url + f"/v2/library/app/referrers/{_digest('never')}")
    assert status == 502 and b"UPSTREAM_UNAVAILABLE" in body


def test_an_upstream_answering_something_else_than_an_index_has_no_api(
        daemon_factory: Callable[..., Daemon], api: ReferrersUpstream) -> None:
    # "Unavailable Referrers API": the fallback tag is asked for, and with
    # none there, the answer is an empty index, not an error.
    api.listing_type = "text/html"
    subject = _digest("subject-html")
    api.referrers[("library/app", subject)] = [_descriptor("sig-html", SIGNATURE)]
    daemon = _api_daemon(daemon_factory, api)
    status, headers, body = http_request(daemon.url + f"/v2/library/app/referrers/{subject}")
    assert status == 200, body
    assert headers["content-type"] == IMAGE_INDEX
    assert _manifests(body) == []
    assert api.count("/referrers/") == 1
    assert api.count("/manifests/sha256-" + subject.split(":", 1)[1]) == 1


def test_an_upstream_429_without_retry_after_gets_ocicaches_own(
        daemon_factory: Callable[..., Daemon], api: ReferrersUpstream) -> None:
    daemon = _api_daemon(daemon_factory, api)
    api.status = 429
    status, headers, body = http_request(daemon.url + f"/v2/library/app/referrers/{_digest('limited')}")
    assert status == 429 and b"TOOMANYREQUESTS" in body
    assert headers["retry-after"].isdigit() and int(headers["retry-after"]) > 0


@pytest.mark.parametrize("query", [
    "sha256:abc",  # not a digest
    f"{_digest('x')}?artifactType=not-a-media-type",
    f"{_digest('x')}?artifactType={_q(SBOM)}&artifactType={_q(SIGNATURE)}",
    f"{_digest('x')}?artifactType=application/x%0d%0aSet-Cookie:a",
    f"{_digest('x')}?n=0",
    f"{_digest('x')}?last=../../etc",
    f"{_digest('x')}?other=1",
])
def test_a_malformed_listing_request_is_a_400_and_never_reaches_the_upstream(
        daemon_factory: Callable[..., Daemon], api: ReferrersUpstream, query: str) -> None:
    daemon = _api_daemon(daemon_factory, api)
    status, headers, body = http_request(daemon.url + "/v2/library/app/referrers/" + query)
    assert status == 400, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["errors"][0]["code"] in ("DIGEST_INVALID", "UNSUPPORTED", "PAGINATION_NUMBER_INVALID")
    assert api.count("/referrers/") == 0
    assert "Traceback" not in daemon.log_text()


# -- distribution 2.8.2: no referrers API, the fallback tag


def _artifact(subject: Image, artifact_type: str, payload: bytes, layer_type: str) -> tuple[bytes, list[Blob]]:
    """An artifact manifest (image-spec manifest.md, "Guidelines for Artifact Usage") about C{subject}."""
    empty = Blob.from_bytes(b"{}", "application/vnd.oci.empty.v1+json")
    layer = Blob.from_bytes(payload, layer_type)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [layer.descriptor()],
        "subject": {"mediaType": subject.manifest_media_type, "digest": subject.manifest_digest,
                    "size": len(subject.manifest_bytes)},
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    }
    return json.dumps(manifest).encode(), [empty, layer]


def test_referrers_of_a_registry_without_the_api_come_from_the_fallback_tag(
        ocitest_images: dict[str, Image], upstream: Registry, daemon: Daemon, hop: Hop) -> None:
    repo = "library/ocitest-signed"
    image = ocitest_images["oci"]
    push_image(upstream.url, image, repo=repo, tag="v1")
    descriptors = []
    artifacts = {}
    for artifact_type, payload, layer_type in (
        (SIGNATURE, b'{"critical":{"image":{"docker-manifest-digest":"%s"}}}' % image.manifest_digest.encode(),
         "application/vnd.dev.cosign.simplesigning.v1+json"),
        (SBOM, b'{"spdxVersion":"SPDX-2.3","name":"ocitest"}', SBOM),
    ):
        body, blobs = _artifact(image, artifact_type, payload, layer_type)
        for blob in blobs:
            push_blob(upstream.url, repo, blob)
        digest = push_manifest(upstream.url, repo, sha256_digest(body), body, OCI_MANIFEST)
        assert digest == sha256_digest(body)
        artifacts[digest] = (body, blobs[1])
        descriptors.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                            "artifactType": artifact_type,
                            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}})
    # What cosign and notation push beside it on a registry without the API.
    fallback = json.dumps({"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": descriptors}).encode()
    fallback_tag = "sha256-" + image.manifest_digest.split(":", 1)[1]
    push_manifest(upstream.url, repo, fallback_tag, fallback, IMAGE_INDEX)
    # distribution 2.8.2 has no referrers API.
    status, _, _ = http_request(upstream.url + f"/v2/{repo}/referrers/{image.manifest_digest}")
    assert status == 404

    url = daemon.url + f"/v2/docker.io/{repo}/referrers/{image.manifest_digest}"
    status, headers, body = http_request(url)
    assert status == 200, body
    assert headers["content-type"] == IMAGE_INDEX
    assert _manifests(body) == descriptors
    assert "oci-filters-applied" not in headers
    assert hop.count("GET", "/referrers/") == 1
    assert hop.count("GET", f"/manifests/{fallback_tag}") == 1
    # The listing is reused, and the fallback tag is cached like any tag.
    status, _, again = http_request(url)
    assert status == 200 and again == body
    assert hop.count("GET", "/referrers/") == 1
    status, _, tagged = http_request(daemon.url + f"/v2/docker.io/{repo}/manifests/{fallback_tag}",
                                     headers={"Accept": IMAGE_INDEX})
    assert status == 200 and tagged == fallback
    assert hop.count("GET", f"/manifests/{fallback_tag}") == 1

    # The filter is ocicache's own here, and says so.
    status, headers, body = http_request(url + "?artifactType=application/spdx%2Bjson")
    assert status == 200, body
    assert headers["oci-filters-applied"] == "artifactType"
    assert [entry["artifactType"] for entry in _manifests(body)] == [SBOM]

    # Each listed artifact, and its payload, is fetched through ocicache and
    # cached like any manifest and blob.
    for digest, (manifest_body, layer) in artifacts.items():
        for _ in range(2):
            status, headers, got = http_request(daemon.url + f"/v2/docker.io/{repo}/manifests/{digest}",
                                                headers={"Accept": OCI_MANIFEST})
            assert status == 200 and got == manifest_body
            assert headers["docker-content-digest"] == digest
            status, _, payload = http_request(daemon.url + f"/v2/docker.io/{repo}/blobs/{layer.digest}")
            assert status == 200 and payload == layer.data
        assert hop.count("GET", f"/manifests/{digest}") == 1
        assert hop.count("GET", f"/blobs/{layer.digest}") == 1


def test_no_referrers_is_an_empty_index_never_a_404(
        ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    image = ocitest_images["team"]
    for query in ("", f"?artifactType={_q(SIGNATURE)}"):
        status, headers, body = http_request(
            daemon.url + f"/v2/docker.io/{image.repo}/referrers/{image.manifest_digest}{query}")
        assert status == 200, body
        assert headers["content-type"] == IMAGE_INDEX
        assert int(headers["content-length"]) == len(body)
        assert _manifests(body) == []
        assert ("oci-filters-applied" in headers) == bool(query)
    # Of a repository the upstream does not have, too.
    status, _, body = http_request(daemon.url + f"/v2/docker.io/library/nothing-here/referrers/{_digest('none')}")
    assert status == 200 and _manifests(body) == []
