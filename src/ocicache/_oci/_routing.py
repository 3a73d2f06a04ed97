"""
Request routing: which upstream, which repository, which endpoint.

Clients address a mirror in three ways, and all three are honoured:

  - containerd adds C{?ns=<registry host>} to every request
    (containerd docs/hosts.md, "ns" query parameter);
  - podman and CRI-O put the registry host in front of the name,
    C{/v2/docker.io/library/alpine/...};
  - docker's C{registry-mirrors} sends neither, which means the upstream
    marked C{default = true}.

A host that is not configured is refused: ocicache is never an open
proxy.  Everything a client sends is checked against the
distribution-spec grammar here, before anything touches the disk or the
network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum

from attrs import frozen

from .._ops._config import Config, UpstreamConfig
from .._spec._errors import ErrorCode, RegistryError
from .._spec._reference import (
    Digest,
    InvalidReference,
    is_registry_host,
    parse_reference,
    validate_name,
)
from .._spec._referrers import ARTIFACT_TYPE_FILTER, is_media_type
from .._web._errors import read_only_error

__all__ = ["Endpoint", "Route", "namespace", "route"]

_MAX_SEGMENTS = 64

MAX_REFERRERS_PAGE = 10000
"""The largest C{n} a referrers listing may ask for."""

# A referrers page cursor is the upstream's to define (the spec says only
# that the next page is in the Link header): a bounded, URL-safe token.
_CURSOR = re.compile(r"[A-Za-z0-9._:+=-]{1,256}")


class Endpoint(StrEnum):
    """The distribution-spec endpoints ocicache serves (spec "Endpoints")."""

    MANIFESTS = "manifests"
    BLOBS = "blobs"
    TAGS = "tags"
    REFERRERS = "referrers"
    UPLOADS = "uploads"


@frozen
class Route:
    """
    A validated request: C{repo} is the upstream's repository name (with
    C{library/} added for Docker Hub), C{client_name} the name as the
    client wrote it, used to build links back to ocicache.
    """

    upstream: UpstreamConfig
    repo: str
    client_name: str
    endpoint: Endpoint
    reference: Digest | str | None
    ns: str | None
    params: tuple[tuple[str, str], ...] = ()
    """The validated query a referrers listing passes upstream, sorted."""


def _split_endpoint(segments: Sequence[str]) -> tuple[list[str], Endpoint, str | None]:
    """
    Split C{<name>/<endpoint>/<reference>} at its end, as the spec's
    endpoint table reads: a name may itself contain a component called
    C{blobs} or C{tags}.
    """
    parts = list(segments)
    for index in range(len(parts) - 1):
        if parts[index] == "blobs" and parts[index + 1] == "uploads":
            return parts[:index], Endpoint.UPLOADS, None
    if len(parts) >= 3 and parts[-2:] == ["tags", "list"]:
        return parts[:-2], Endpoint.TAGS, None
    if len(parts) >= 3 and parts[-2] in (Endpoint.MANIFESTS, Endpoint.BLOBS, Endpoint.REFERRERS):
        return parts[:-2], Endpoint(parts[-2]), parts[-1]
    raise RegistryError(ErrorCode.UNSUPPORTED, "no such registry endpoint", status=404)


def _is_host(component: str) -> bool:
    # The reference grammar's rule for a leading domain component
    # (distribution/reference): it holds a dot or a port, or is localhost.
    # It must be a host name, too: ".." holds a dot but is a hostile name,
    # answered NAME_INVALID, not NAME_UNKNOWN.
    if not is_registry_host(component):
        return False
    return "." in component or ":" in component or component == "localhost"


def namespace(args: Mapping[bytes, Sequence[bytes]]) -> str | None:
    """
    The registry host a mirror client names with C{?ns=} (containerd
    docs/hosts.md), lowercased as hosts compare (RFC 3986 §3.2.2); raises
    C{NAME_INVALID} when it is given more than once.
    """
    values = args.get(b"ns")
    if values is None:
        return None
    if len(values) != 1:
        raise RegistryError(ErrorCode.NAME_INVALID, "give ns= once")
    return values[0].decode("ascii", "replace").lower()


def route(raw_segments: Sequence[bytes], args: Mapping[bytes, Sequence[bytes]], config: Config) -> Route:
    """
    Route the path after C{/v2/}, with the request's query arguments.
    Raises L{RegistryError} with the spec's code for anything malformed or
    not configured.
    """
    if len(raw_segments) > _MAX_SEGMENTS:
        raise RegistryError(ErrorCode.NAME_INVALID, "the repository name is too long")
    try:
        segments = [segment.decode("ascii") for segment in raw_segments]
    except UnicodeDecodeError:
        raise RegistryError(ErrorCode.NAME_INVALID, "the repository name is not ASCII") from None
    name_parts, endpoint, reference_text = _split_endpoint(segments)
    if endpoint == Endpoint.UPLOADS:
        raise read_only_error()
    if any("%" in segment or "/" in segment for segment in name_parts):
        # The grammar has no percent-encoding: an encoded dot or slash is an
        # attempt to smuggle one past this check.  twisted.web decodes each
        # segment of request.postpath, so "%2f" arrives as a "/" inside one.
        # (A reference is left to its own grammar: DIGEST_INVALID or
        # MANIFEST_INVALID.)
        raise RegistryError(ErrorCode.NAME_INVALID, "percent-encoding is not allowed in a repository name")
    ns = namespace(args)
    if ns is not None:
        upstream = config.upstream_named(ns)
        if upstream is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, "ocicache has no upstream for that ns",
                                detail={"ns": ns[:255]})
        repo_parts = name_parts
    elif name_parts and _is_host(name_parts[0]):
        prefix = name_parts[0].lower()
        upstream = config.upstream_named(prefix)
        if upstream is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, "ocicache has no upstream for that registry host",
                                detail={"registry": prefix[:255]})
        repo_parts = name_parts[1:]
    else:
        default = config.default_upstream
        if default is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN,
                                "no default upstream: address a registry with ?ns= or a host prefix")
        upstream = default
        repo_parts = name_parts
    client_name = "/".join(name_parts)
    repo = "/".join(repo_parts)
    try:
        validate_name(repo)
    except InvalidReference as e:
        raise RegistryError(e.code, e.message) from None
    if upstream.is_docker_hub and "/" not in repo:
        # Docker Hub's official images live under library/.
        repo = "library/" + repo
    reference: Digest | str | None = None
    if reference_text is not None:
        try:
            if endpoint in (Endpoint.BLOBS, Endpoint.REFERRERS):
                # "Listing Referrers": the subject is named by digest; any
                # other syntax is a 400 (DIGEST_INVALID).
                reference = Digest.parse(reference_text)
            else:
                reference = parse_reference(reference_text)
        except InvalidReference as e:
            raise RegistryError(e.code, e.message) from None
    params = _referrers_params(args) if endpoint == Endpoint.REFERRERS else ()
    return Route(upstream, repo, client_name, endpoint, reference, ns, params)


def _referrers_params(args: Mapping[bytes, Sequence[bytes]]) -> tuple[tuple[str, str], ...]:
    """
    The query of a referrers listing (distribution-spec "Listing
    Referrers"): C{artifactType}, a media type (RFC 6838 §4.2), and the
    C{n} and C{last} of pagination links.  Anything else, or a value given
    twice, is a 400.
    """
    params: dict[str, str] = {}
    for key, values in args.items():
        if key == b"ns":
            continue
        name = key.decode("ascii", "replace")
        if name not in (ARTIFACT_TYPE_FILTER, "n", "last"):
            raise RegistryError(ErrorCode.UNSUPPORTED, "unknown query parameter for referrers", status=400)
        value = values[0].decode("ascii", "replace") if len(values) == 1 else ""
        if name == ARTIFACT_TYPE_FILTER and not is_media_type(value):
            raise RegistryError(ErrorCode.UNSUPPORTED, "artifactType must be one media type", status=400)
        if name == "n" and not (value.isdigit() and 0 < int(value) <= MAX_REFERRERS_PAGE):
            raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID,
                                f"n must be an integer from 1 to {MAX_REFERRERS_PAGE}")
        if name == "last" and _CURSOR.fullmatch(value) is None:
            raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, "last is not a valid page cursor")
        params[name] = str(int(value)) if name == "n" else value
    return tuple(sorted(params.items()))

