"""
Unit tests for L{ocicache._oci._referrers.ReferrerService} with a fake
upstream and manifest service: which answers mean "no referrers API", what
is filtered and said to be, and what is served when the upstream fails.
(The real thing, against distribution and a referrers upstream, is in
C{test_integration_referrers.py}.)
"""

from __future__ import annotations

import json
from collections.abc import Coroutine, Sequence
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from ocicache._fetch._result import CacheResult
from ocicache._oci._errors import ManifestUnknown
from ocicache._oci._manifests import Manifest, ManifestLookup, ManifestService
from ocicache._oci._referrers import ReferrerService
from ocicache._spec._reference import Digest
from ocicache._spec._referrers import IMAGE_INDEX
from ocicache._upstream._client import Upstream
from ocicache._upstream._errors import UpstreamDenied, UpstreamUnavailable

SUBJECT = Digest("sha256", "5" * 64)
SBOM = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "1" * 64, "size": 9,
        "artifactType": "application/spdx+json"}
SIGNATURE = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "2" * 64,
             "size": 9, "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}


def _index(*entries: object) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": list(entries)}).encode()


class _Response:
    def __init__(self, code: int, body: bytes = b"", headers: dict[bytes, bytes] | None = None) -> None:
        self.code = code
        self.body = body
        self.headers = Headers({name: [value] for name, value in (headers or {}).items()})


class _Upstream:
    name = "docker.io"

    def __init__(self) -> None:
        self.answers: list[_Response | Exception] = []
        self.asked: list[tuple[str, str, tuple[tuple[str, str], ...]]] = []

    async def referrers(self, repo: str, digest: str, params: tuple[tuple[str, str], ...]) -> _Response:
        self.asked.append((repo, digest, params))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def read_body(self, response: _Response, limit: int) -> bytes | None:
        return response.body if len(response.body) <= limit else None

    async def discard(self, response: _Response) -> None:
        pass


class _Manifests:
    def __init__(self) -> None:
        self.tags: dict[str, Manifest] = {}
        self.asked: list[str] = []

    async def lookup(self, upstream: object, repo: str, reference: str, accept: Sequence[str]) -> ManifestLookup:
        self.asked.append(reference)
        if reference not in self.tags:
            raise ManifestUnknown(reference)
        return ManifestLookup(self.tags[reference], CacheResult.MISS)


class _Case:
    def __init__(self, ttl: float = 60.0) -> None:
        self.clock = Clock()
        self.upstream = _Upstream()
        self.manifests = _Manifests()
        self.service = ReferrerService(self.clock, cast(ManifestService, self.manifests), ttl)

    def page(self, params: tuple[tuple[str, str], ...] = ()) -> Any:
        """The lookup, or the failure it raised: the fakes answer at once."""
        coroutine: Coroutine[Any, Any, Any] = self.service.page(
            cast(Upstream, self.upstream), "library/app", SUBJECT, params)
        results: list[object] = []
        Deferred.fromCoroutine(coroutine).addBoth(results.append)
        assert len(results) == 1
        result = results[0]
        if isinstance(result, Failure):
            return result.value
        return result


ARTIFACT = (("artifactType", "application/spdx+json"),)


def test_a_listing_is_passed_through_and_reused_within_the_ttl() -> None:
    case = _Case()
    case.upstream.answers.append(_Response(200, _index(SBOM), {b"content-type": IMAGE_INDEX.encode()}))
    first = case.page()
    assert (first.page.body, first.page.filtered, first.result) == (_index(SBOM), False, CacheResult.MISS)
    assert case.page().result == CacheResult.HIT
    assert len(case.upstream.asked) == 1
    case.clock.advance(61)
    case.upstream.answers.append(_Response(200, _index(), {b"content-type": IMAGE_INDEX.encode()}))
    assert case.page().page.body == _index()


def test_a_filter_applied_upstream_is_kept_and_one_not_applied_is_applied_here() -> None:
    case = _Case()
    case.upstream.answers.append(_Response(200, _index(SBOM), {
        b"content-type": IMAGE_INDEX.encode(), b"oci-filters-applied": b"annotations, artifactType"}))
    kept = case.page(ARTIFACT)
    assert (kept.page.body, kept.page.filtered) == (_index(SBOM), True)
    case.upstream.answers.append(_Response(200, _index(SBOM, SIGNATURE), {b"content-type": IMAGE_INDEX.encode()}))
    here = case.page((("artifactType", "application/vnd.dev.cosign.artifact.sig.v1+json"),))
    assert json.loads(here.page.body)["manifests"] == [SIGNATURE] and here.page.filtered


def test_a_filter_nobody_asked_for_is_not_claimed() -> None:
    case = _Case()
    case.upstream.answers.append(_Response(200, _index(SBOM), {
        b"content-type": IMAGE_INDEX.encode(), b"oci-filters-applied": b"artifactType"}))
    assert case.page().page.filtered is False


@pytest.mark.parametrize("response", [
    _Response(404),
    _Response(200, b"<html>", {b"content-type": b"text/html"}),
    _Response(200, _index(SBOM), {b"content-type": b"application/json"}),
])
def test_no_referrers_api_means_the_fallback_tag(response: _Response) -> None:
    case = _Case()
    case.upstream.answers.append(response)
    case.manifests.tags["sha256-" + "5" * 64] = Manifest(Digest("sha256", "9" * 64), IMAGE_INDEX,
                                                         _index(SBOM, SIGNATURE))
    found = case.page(ARTIFACT)
    assert json.loads(found.page.body)["manifests"] == [SBOM]
    assert found.page.filtered and found.page.link is None
    assert case.manifests.asked == ["sha256-" + "5" * 64]


@pytest.mark.parametrize("tagged", [
    None,
    Manifest(Digest("sha256", "9" * 64), "application/vnd.oci.image.manifest.v1+json", _index(SBOM)),
    Manifest(Digest("sha256", "9" * 64), IMAGE_INDEX, b"not json"),
])
def test_no_valid_fallback_index_means_no_referrers(tagged: Manifest | None) -> None:
    case = _Case()
    case.upstream.answers.append(_Response(404))
    if tagged is not None:
        case.manifests.tags["sha256-" + "5" * 64] = tagged
    found = case.page()
    assert json.loads(found.page.body) == {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": []}
    assert not found.page.filtered


def test_an_upstream_that_fails_gets_the_last_listing_or_passes_its_failure_on() -> None:
    case = _Case(ttl=10.0)
    case.upstream.answers.append(UpstreamUnavailable("refused"))
    assert isinstance(case.page(), UpstreamUnavailable)
    case.upstream.answers.append(_Response(200, _index(SBOM), {b"content-type": IMAGE_INDEX.encode()}))
    assert case.page().result == CacheResult.MISS
    case.clock.advance(11)
    case.upstream.answers.append(_Response(503))
    stale = case.page()
    assert (stale.page.body, stale.result) == (_index(SBOM), CacheResult.STALE)
    case.upstream.answers.append(_Response(403))
    assert isinstance(case.page(), UpstreamDenied)  # access, not availability: never stale


def test_an_unfilterable_listing_is_the_upstreams_failure() -> None:
    case = _Case()
    case.upstream.answers.append(_Response(200, b"[]", {b"content-type": IMAGE_INDEX.encode()}))
    assert isinstance(case.page(ARTIFACT), UpstreamUnavailable)
