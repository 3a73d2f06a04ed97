"""
The schema of who may use the mirror: C{[auth]} (how clients prove who
they are, and C{[[auth.oidc]]}) and C{[[rule]]} (who may pull what).
Patterns stay text here; L{ocicache._policy} compiles them.
"""

from __future__ import annotations

import re
from typing import ClassVar

from attrs import frozen

from ..._identity._auth_files import read_htpasswd, read_jwks, read_signing_key, read_tokens_file
from ._fields import Table, key
from ._names import Glob, HttpURLText
from ._secrets import Files
from ._types import BOOLEAN, Choice, Duration, Invalid, ListOf, TableOf, Text
from ._upstream import REPOSITORY_GLOBS
from ._values import AuthConfig, OIDCIssuerConfig, RuleConfig

__all__ = ["AuthTable", "OIDCTable", "RuleTable"]

_AUTH = AuthConfig()
_GLOB = Glob()
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_TOKEN_TTL = 86400.0
"""ocicache's own tokens live minutes: long enough for one pull, short enough that a leaked one soon stops working."""


@frozen
class OIDCTable:
    """
    OIDC workload identity (CI jobs): JWTs from this issuer, for this
    audience, signed with a key of its JWKS and not expired (60 s leeway),
    as "Authorization: Bearer <jwt>" or as a Basic password. Their string
    claims (repository, ref, ...) go to the policy. One table per issuer.
    """

    issuer: str = key(Text(bool, "required (the tokens' iss)"), "The tokens' iss.",
                      required="the tokens' iss, e.g. 'https://token.actions.githubusercontent.com'",
                      example="https://token.actions.githubusercontent.com")
    audience: str = key(Text(bool, "required (the aud the tokens are issued for)"), "The tokens' aud.",
                        required="the aud the tokens are issued for", example="https://mirror.example.com")
    jwks_url: str | None = key(
        HttpURLText(), "Where its JWKS is fetched from (cached; again hourly, or on an unknown key id).",
        example="https://token.actions.githubusercontent.com/.well-known/jwks")
    jwks_file: str | None = key(Text(), "Or, for an air-gapped site, a copy on disk (set one of the two).",
                                example="/etc/ocicache/github-jwks.json")

    def check(self) -> None:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise Invalid("set jwks_url or jwks_file, one of them", ("jwks_url",))

    def build(self, files: Files, where: str) -> OIDCIssuerConfig:
        return OIDCIssuerConfig(issuer=self.issuer, audience=self.audience, jwks_url=self.jwks_url,
                                jwks=files.parsed("jwks_file", self.jwks_file, read_jwks))


@frozen
class AuthTable:
    """
    Who may use the mirror at all. Without this section nobody has to
    authenticate (fine on loopback). With it, a request must prove an
    identity (401 UNAUTHORIZED with a WWW-Authenticate challenge
    otherwise), /v2/ too; the access log names it (user:alice,
    token:buildfarm, oidc:<sub>). Any combination of the modes below;
    every file is read and checked at start.
    """

    anonymous: bool = key(BOOLEAN, "Serve requests that present no credentials, as anonymous.",
                          default=_AUTH.anonymous)
    tokens_file: str | None = key(
        Text(), 'Static bearer tokens, one "name:token" or "name:sha256:<hex>" per line.',
        example="/etc/ocicache/tokens", note="""Static bearer tokens, one per line: "name:token" (at least 16 characters
of A-Z a-z 0-9 -._~+/=) or "name:sha256:<hex>" (the SHA-256 of the token).
Sent as "Authorization: Bearer <token>", or as the password of Basic
credentials whose user is the token's name.""")
    htpasswd_file: str | None = key(Text(), "Basic credentials: an htpasswd file of bcrypt entries (htpasswd -B).",
                                    example="/etc/ocicache/htpasswd")
    issue_tokens: bool = key(
        BOOLEAN, "The registry token flow: Bearer challenges and ocicache's GET /token.",
        default=_AUTH.issue_tokens, note="""The registry token flow: 401s say Bearer realm=...,service=...,scope=...
and ocicache's GET /token swaps Basic credentials (htpasswd, a static
token, or an OIDC JWT as the password) for a short-lived signed token.
Without it, 401s say Basic.""")
    token_realm: str | None = key(
        HttpURLText(), "The realm in the challenge (behind a TLS-terminating proxy).",
        example="https://mirror.example.com/token", shown="/token on the host the client used")
    token_service: str = key(
        Text(lambda text: text and text.isprintable(), "must be a non-empty printable string"),
        "The service named in the challenge and in the tokens' aud (and the Basic realm).",
        default=_AUTH.token_service)
    token_ttl: float = key(
        Duration(positive=True, maximum=_MAX_TOKEN_TTL, too_long="must be at most 1d"),
        "How long an issued token lives (never past an OIDC token's own expiry).", default=_AUTH.token_ttl)
    token_key_file: str | None = key(
        Text(), "The PEM RSA or EC P-256 key tokens are signed with.", example="/etc/ocicache/token-key.pem",
        shown="a P-256 key made at start", note="""The key tokens are signed with: a PEM RSA (RS256) or EC P-256 (ES256)
private key. Default: a P-256 key made at start (tokens issued before a
restart or reload are then refused, and clients fetch new ones).""")
    oidc: tuple[OIDCTable, ...] = key(ListOf(Table(OIDCTable)), "[[auth.oidc]]: the OIDC issuers.", default=())

    def check(self) -> None:
        issuers: list[str] = []
        for index, entry in enumerate(self.oidc):
            try:
                entry.check()
            except Invalid as e:
                raise e.at("oidc", index) from None
            if entry.issuer in issuers:
                raise Invalid(f"{entry.issuer!r} is configured twice", ("oidc", index, "issuer"))
            if self.issue_tokens and entry.issuer == self.token_service:
                raise Invalid(f"{entry.issuer!r} is ocicache's own token_service", ("oidc", index, "issuer"))
            issuers.append(entry.issuer)
        if (self.tokens_file, self.htpasswd_file) == (None, None) and not self.oidc:
            raise Invalid("set tokens_file, htpasswd_file or [[auth.oidc]] (or remove [auth])")
        if (self.token_realm, self.token_key_file) != (None, None) and not self.issue_tokens:
            raise Invalid("token_realm and token_key_file need issue_tokens = true", ("issue_tokens",))

    def build(self, files: Files, where: str) -> AuthConfig:
        oidc = []
        for index, entry in enumerate(self.oidc):
            try:
                oidc.append(entry.build(files, f"{where}.oidc[{index}]"))
            except Invalid as e:
                raise e.at("oidc", index) from None
        return AuthConfig(
            anonymous=self.anonymous, tokens=files.parsed("tokens_file", self.tokens_file, read_tokens_file) or (),
            users=files.parsed("htpasswd_file", self.htpasswd_file, read_htpasswd) or {},
            issue_tokens=self.issue_tokens, token_realm=self.token_realm, token_service=self.token_service,
            token_ttl=self.token_ttl, token_key=files.parsed("token_key_file", self.token_key_file, read_signing_key),
            oidc=tuple(oidc))


@frozen
class RuleTable:
    """
    Per identity: the first [[rule]] whose matchers (identity, user, token,
    claims: all given must hold) and scope (upstreams, repositories) match
    decides, with action "allow" (default) or "deny". With any [[rule]], a
    request no rule matches is denied; with none, everyone may pull what the
    upstreams' patterns allow. Identities: "anonymous", "user:NAME",
    "token:NAME", "oidc:SUBJECT"; "**" is everyone. SIGHUP reloads them.
    """

    EXAMPLES: ClassVar[str] = """
# [[rule]]
# name = "main of ourorg/app"
# claims = { repository = "ourorg/app", ref = "refs/heads/main" }
# repositories = ["ourorg/**"]
#
# [[rule]]
# user = "ci-*"
# upstreams = ["docker.io"]
#
# [[rule]]
# token = "deploy"
# action = "deny"
# repositories = ["ourorg/secret-*"]
#
# [[rule]]
# identity = "**"
# repositories = ["alpine", "debian"]
"""
    """Rules as the example file shows them."""

    name: str | None = key(Text(lambda text: text and text.isprintable() and len(text) <= 64,
                                "one line of at most 64 characters, for log lines"),
                           "What log lines call the rule: rule[N] (name).", example="main of ourorg/app")
    action: str = key(Choice(("allow", "deny")), '"allow" or "deny".', default="allow")
    identity: str | None = key(_GLOB, 'A glob of "anonymous", "user:NAME", "token:NAME" or "oidc:SUBJECT".',
                               example="**")
    user: str | None = key(_GLOB, "A glob of htpasswd user names.", example="ci-*")
    token: str | None = key(_GLOB, "A glob of static token names.", example="deploy")
    claims: tuple[tuple[str, str], ...] | None = key(
        TableOf(_CLAIM_NAME.fullmatch, "{name} is not a claim name", Glob(expected="a string pattern")),
        "Globs of an OIDC token's string claims, all of which must match.",
        example={"repository": "ourorg/app", "ref": "refs/heads/main"})
    upstreams: tuple[str, ...] | None = key(
        ListOf(Text(lower=True), empty="must not be empty (leave it out for every upstream)"),
        "The upstreams it is for; unset: every one.", example=["docker.io"])
    repositories: tuple[str, ...] | None = key(REPOSITORY_GLOBS, "Globs of the repositories it is for; unset: all.",
                                               example=["ourorg/**"])

    def check(self) -> None:
        if (self.identity, self.user, self.token, self.claims) == (None,) * 4:
            raise Invalid('say who it is for: identity, user, token or claims (identity = "**" for everyone)')

    def build(self, files: Files, where: str) -> RuleConfig:
        return RuleConfig(
            label=f"{where} ({self.name})" if self.name else where, action=self.action, identity=self.identity,
            user=self.user, token=self.token, claims=self.claims or (), upstreams=self.upstreams,
            repositories=self.repositories)
