"""
C{/admin/} on the operator listener: what C{ocicache ls}, C{purge} and
C{pulls} talk to.

    GET  /admin/repositories            repositories: blobs, bytes, tags, last use
    GET  /admin/tags                    tags: the manifest each names, last revalidation
    GET  /admin/blobs                   blobs, biggest first: size, hits, last use, repositories
    POST /admin/purge?repository=GLOB   a repository glob (docker.io/library/*, ghcr.io/**)
    POST /admin/purge?reference=REF     one tag (docker.io/library/alpine:3.20) or digest (...@sha256:...)
    POST /admin/purge?digest=DIGEST     one manifest or blob, wherever it came from
    POST /admin/evict[?to=BYTES]        a janitor pass now: expiry, then eviction to max_size (or BYTES)
    GET  /admin/pulls[?days=N]          who pulled which reference and digest, when
    GET  /admin/upstreams               each upstream's circuit, offline switch and quota
    POST /admin/upstreams?name=N&offline=true|false

A client on the loopback interface may use it; any other must send
C{Authorization: Bearer <[admin] token>} (RFC 6750 §2.1), and without a
configured token may not.  Answers are JSON; errors the distribution-spec
error body, mapped in L{ocicache._web._errors}.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._ops._config import parse_size
from .._policy._patterns import Pattern
from .._spec._errors import ErrorCode, RegistryError
from .._spec._reference import Digest, InvalidReference, parse_image_reference
from .._storage._catalog import blobs, plan_purge, repositories, tags
from .._storage._database import Database
from .._storage._janitor import Janitor
from .._storage._pull_log import PullLog
from .._storage._purge import Purger
from .._upstream._client import Upstream
from ._errors import internal_error, registry_error, render_error
from ._json_answer import from_loopback, write_json

__all__ = ["Admin", "AdminResource"]

log = Logger()


@frozen
class Admin:
    """What the admin API works on, wired once by the service."""

    metadata: Database
    purger: Purger
    janitor: Janitor
    pulls: PullLog
    upstreams: Mapping[str, Upstream]
    default_upstream: Callable[[], str | None]
    reactor: IReactorTime
    token: Callable[[], str | None]
    """The C{[admin]} token of the running configuration (a change waits for a restart)."""


class AdminResource(Resource):
    isLeaf = True

    def __init__(self, admin: Admin) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._admin = admin
        self._routes: dict[tuple[bytes, bytes], Callable[[Request], Any]] = {
            (b"GET", b"repositories"): lambda request: self._read(repositories),
            (b"GET", b"tags"): lambda request: self._read(tags),
            (b"GET", b"blobs"): lambda request: self._read(blobs),
            (b"POST", b"purge"): self._purge,
            (b"POST", b"evict"): self._evict,
            (b"GET", b"pulls"): self._pulls,
            (b"GET", b"upstreams"): self._upstreams,
            (b"POST", b"upstreams"): self._switch,
        }

    def render(self, request: Request) -> int | bytes:
        refusal = self._refusal(request)
        if refusal is not None:
            return render_error(request, refusal)
        path = b"/".join(request.postpath or [])
        method = b"GET" if request.method == b"HEAD" else request.method
        route = self._routes.get((method, path))
        if route is None:
            if any(key[1] == path for key in self._routes):
                return render_error(request, RegistryError(ErrorCode.UNSUPPORTED, "method not allowed", status=405))
            return render_error(request, RegistryError(ErrorCode.NAME_UNKNOWN, "no such admin endpoint",
                                                       status=404))
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda result: gone.append(True))
        answering = Deferred.fromCoroutine(_call(route, request))
        answering.addCallback(lambda body: write_json(request, body, gone))
        answering.addErrback(self._failed, request, gone)
        return NOT_DONE_YET

    def _refusal(self, request: Request) -> RegistryError | None:
        if from_loopback(request):
            return None
        token = self._admin.token()
        if token is None:
            return RegistryError(ErrorCode.DENIED, "the admin API answers the loopback interface only"
                                                   " ([admin] token_file opens it to others)", status=403)
        sent = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(sent, b"Bearer " + token.encode("ascii")):
            request.setHeader(b"www-authenticate", b'Bearer realm="ocicache admin"')
            return RegistryError(ErrorCode.UNAUTHORIZED, "the admin API wants its bearer token", status=401)
        return None

    async def _read(self, query: Callable[..., Any]) -> object:
        return await self._admin.metadata.read(query)

    async def _purge(self, request: Request) -> object:
        args = _args(request, ("repository", "reference", "digest"))
        if len(args) != 1:
            raise RegistryError(ErrorCode.UNSUPPORTED, "give one of repository=, reference= or digest=")
        (name, value), = args.items()
        if name == "repository":
            try:
                pattern = Pattern(value)
            except ValueError as e:
                raise RegistryError(ErrorCode.NAME_INVALID, f"not a repository glob: {e}") from None
            plan = plan_purge(pattern.matches)
        elif name == "digest":
            plan = plan_purge(lambda repository: False, digest=str(_digest(value)))
        else:
            repository, reference = self._reference(value)
            if isinstance(reference, Digest):
                plan = plan_purge(lambda candidate: False, digest=str(reference))
            else:
                plan = plan_purge(lambda candidate: candidate == repository, tag=reference)
        chosen = await self._admin.metadata.read(plan)
        report = await self._admin.purger.purge(chosen)
        log.info("Admin: purged {what}: {tags} tags, {manifests} manifests, {blobs} blobs ({size} B);"
                 " kept {kept} protected blobs", what=f"{name}={value}"[:200], tags=report.tags,
                 manifests=report.manifests, blobs=report.blobs, size=report.bytes, kept=len(report.kept))
        return {"purged": report.as_json()}

    def _reference(self, text: str) -> tuple[str, Digest | str]:
        try:
            image = parse_image_reference(text)
        except InvalidReference as e:
            raise RegistryError(ErrorCode.NAME_INVALID, f"not an image reference: {e}") from None
        upstream = image.registry or self._admin.default_upstream()
        if upstream is None or upstream not in self._admin.upstreams:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no upstream is named {upstream!r}", status=404)
        repo = image.repository
        if self._admin.upstreams[upstream].config.is_docker_hub and "/" not in repo:
            repo = "library/" + repo
        return f"{upstream}/{repo}", image.reference

    async def _evict(self, request: Request) -> object:
        args = _args(request, ("to",))
        target = None
        if "to" in args:
            try:
                target = parse_size(args["to"])
            except ValueError as e:
                raise RegistryError(ErrorCode.UNSUPPORTED, f"to= {e}") from None
        report = await self._admin.janitor.run(evict_to=target)
        return {"evicted": report.evicted, "evicted_bytes": report.evicted_bytes, "expired": report.expired,
                "expired_bytes": report.expired_bytes, "manifests_removed": report.manifests_removed}

    async def _pulls(self, request: Request) -> object:
        args = _args(request, ("days",))
        days = 3650.0
        if "days" in args:
            try:
                days = float(args["days"])
            except ValueError:
                days = math.nan
            if not 0 < days <= 3650:
                raise RegistryError(ErrorCode.UNSUPPORTED, "days= must be a number of days above 0")
        since = self._admin.reactor.seconds() - days * 86400
        return {"pulls": await self._admin.pulls.recent(since)}

    async def _upstreams(self, request: Request) -> object:
        now = self._admin.reactor.seconds()
        return {"upstreams": [
            {"name": name, "circuit": upstream.circuit.state.value, "failures": upstream.circuit.failures,
             "open_for": round(upstream.circuit.open_for(), 1), "last_failure": upstream.circuit.last_failure,
             "quota": {"limit": upstream.quota.limit, "remaining": upstream.quota.remaining,
                       "limited_for": round(upstream.quota.limited_for(now), 1)}}
            for name, upstream in sorted(self._admin.upstreams.items())]}

    async def _switch(self, request: Request) -> object:
        args = _args(request, ("name", "offline"))
        upstream = self._admin.upstreams.get(args.get("name", ""))
        if upstream is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, "name= must be a configured upstream", status=404)
        if args.get("offline") not in ("true", "false"):
            raise RegistryError(ErrorCode.UNSUPPORTED, "offline= must be true or false")
        offline = args["offline"] == "true"
        if upstream.circuit.offline != offline:
            upstream.circuit.offline = offline
            log.info("{upstream}: {state} (admin API)", upstream=upstream.name,
                     state="offline: serving only what the cache holds" if offline else "online again")
        return {"name": upstream.name, "offline": offline}

    def _failed(self, failure: Failure, request: Request, gone: list[bool]) -> None:
        error = registry_error(failure.value) if failure.value is not None else None
        if error is None:
            log.failure("Unexpected error answering {method} {path}", failure,
                        method=request.method.decode("ascii", "replace"),
                        path=request.path.decode("ascii", "replace"))
            error = internal_error()
        if gone:
            return
        request.write(render_error(request, error))
        request.finish()


async def _call(route: Callable[[Request], Any], request: Request) -> object:
    result: object = await route(request)
    return result


def _args(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters, each once and in UTF-8; any other is refused."""
    found: dict[str, str] = {}
    for raw, values in (request.args or {}).items():
        try:
            name = raw.decode("ascii")
            value = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise RegistryError(ErrorCode.UNSUPPORTED, "parameters must be UTF-8") from None
        if name not in allowed:
            raise RegistryError(ErrorCode.UNSUPPORTED, f"unknown parameter {name[:40]!r}")
        if len(values) != 1:
            raise RegistryError(ErrorCode.UNSUPPORTED, f"give {name}= once")
        found[name] = value
    return found


def _digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except ValueError as e:
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"not a digest: {e}") from None
