"""
C{GET /token}: the registry token flow's token endpoint (distribution's
"Token Authentication Specification"), served by ocicache itself when
C{[auth] issue_tokens = true}.

A client challenged with C{Bearer realm=".../token",service=...} asks
here with its Basic credentials (an htpasswd user, a static token, or an
OIDC JWT as the password) and C{?service=&scope=}, and gets
C{{"token", "access_token", "expires_in", "issued_at"}} (token spec,
"Token Response Fields").  Without credentials, or with wrong ones, the
answer is C{401} with a C{Basic} challenge; for one of ocicache's own
tokens, C{403}: a token is never renewed by itself.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._identity._errors import Unauthenticated
from .._spec._errors import ErrorCode, RegistryError
from .._web._errors import challenged, internal_error, registry_error, render_error
from .._web._exchange import Exchange

if TYPE_CHECKING:
    from ._services import Services

__all__ = ["TokenResource"]

log = Logger()

_MAX_SCOPES = 32
_NOT_HERE = RegistryError(ErrorCode.UNSUPPORTED, "not a registry endpoint", status=404)


class TokenResource(Resource):
    """C{/token}; a JSON 404 when this mirror issues no tokens."""

    isLeaf = True

    def __init__(self, services: Services) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        self._services = services

    def render(self, request: Request) -> int | bytes:
        asked = Exchange(route="token")
        request.notifyFinish().addBoth(asked.ended, request, self._services.metrics)
        answering = Deferred.fromCoroutine(self._answer(request, asked))
        answering.addErrback(self._failed, request, asked)
        return NOT_DONE_YET

    async def _answer(self, request: Request, asked: Exchange) -> None:
        # Read once: a reload may replace it while this request waits.
        authenticator = self._services.authenticator
        if authenticator.issuer is None or request.postpath not in ([], [b""]):
            raise _NOT_HERE
        if request.method != b"GET":
            raise RegistryError(ErrorCode.UNSUPPORTED, "the token endpoint takes GET",
                                headers=((b"allow", b"GET"),))
        try:
            identity, not_after = await authenticator.authenticate_for_token(request.getHeader(b"authorization"))
        except Unauthenticated as e:
            raise challenged(e, authenticator.challenge_for_token()) from None
        asked.identity = identity
        if asked.finished:
            return  # the client went away
        issued = authenticator.issue(identity, _scopes(request), not_after)
        body = json.dumps({
            "token": issued.token, "access_token": issued.token,
            "expires_in": issued.expires_in, "issued_at": issued.issued_at,
        }).encode("ascii")
        # RFC 6749 §5.1: a response carrying a token is not to be cached.
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: Request, asked: Exchange) -> None:
        error = registry_error(failure.value) if failure.value is not None else None
        if error is None:
            log.failure("Unexpected error answering a token request", failure)
            error = internal_error()
        if asked.finished:
            return  # nobody to tell
        request.write(render_error(request, error))
        request.finish()


def _scopes(request: Request) -> list[str]:
    """
    The C{scope} parameters (token spec, "Requesting a Token"): repeated,
    or several in one separated by spaces (RFC 6749 §3.3); bounded.
    """
    scopes: list[str] = []
    for value in (request.args or {}).get(b"scope", []):
        scopes.extend(value.decode("ascii", "replace").split())
    return scopes[:_MAX_SCOPES]
