"""
The schema of C{[[upstream]]}, and of the credential-program keys it
shares with C{[storage]}; each table builds its L{UpstreamConfig}.
"""

from __future__ import annotations

import re
from typing import ClassVar

from attrs import frozen
from hyperlink import DecodedURL

from ._fields import key
from ._names import REGISTRY_HOST, Argv, Glob, HttpURL
from ._proxy import ProxyURL
from ._secrets import Files
from ._types import BOOLEAN, POSITIVE, Choice, CountOrPercent, Duration, Integer, Invalid, ListOf, Refused, Subset, Text
from ._values import MAX_STALE_LIMIT, STALE_FAILURES, CredentialCommand, Credentials, StalePolicy, UpstreamConfig

__all__ = ["CredentialProgram", "UpstreamTable"]

_DEFAULTS = UpstreamConfig(name="", url=DecodedURL.from_text("http://defaults"))
_STALE = StalePolicy()

# The characters of the reference grammar's names and tags, plus the
# glob's own: a pattern holding anything else could never match.
REPOSITORY_GLOBS = ListOf(Glob(re.compile(r"^[a-z0-9._/*?-]+$")),
                          empty="must not be empty (leave it out to match everything)")
_TAG_GLOBS = ListOf(Glob(re.compile(r"^[A-Za-z0-9._*?-]+$")),
                    empty="must not be empty (leave it out to match everything)")
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
"""RFC 6750 §2.1: what a bearer token may hold, so it cannot break the header."""


@frozen
class CredentialProgram:
    """The keys of a program that prints credentials (docker-credential-helpers' C{get})."""

    credential_helper: str | None = key(
        Text(_HELPER_NAME.fullmatch, "{value} is not a helper name such as 'ecr-login'"
             " (ocicache runs docker-credential-<name>)"),
        "Runs docker-credential-<name> get.", example="ecr-login")
    credential_command: tuple[str, ...] | None = key(
        Argv(), "A program (absolute path or a name on $PATH) and its arguments.",
        example=["/usr/local/bin/registry-token", "--json"])
    credential_ttl: float | None = key(POSITIVE, "The program runs again after this.", example="15m",
                                       shown="15m")

    @property
    def has_program(self) -> bool:
        return (self.credential_helper, self.credential_command) != (None, None)

    def check_program(self) -> None:
        if self.credential_helper is not None and self.credential_command is not None:
            raise Invalid("set credential_helper or credential_command, not both")
        if self.credential_ttl is not None and not self.has_program:
            raise Invalid("needs credential_helper or credential_command", ("credential_ttl",))

    def program(self, url: DecodedURL) -> CredentialCommand | None:
        if self.credential_helper is not None:
            argv: tuple[str, ...] = (f"docker-credential-{self.credential_helper}", "get")
        elif self.credential_command is not None:
            argv = self.credential_command
        else:
            return None
        ttl = 15 * 60.0 if self.credential_ttl is None else self.credential_ttl
        return CredentialCommand(argv=argv, ttl=ttl, server_url=url.replace(path=()).to_uri().to_text())


@frozen
class UpstreamTable(CredentialProgram):
    """
    One [[upstream]] per registry. With none at all, ocicache mirrors
    docker.io (the default), ghcr.io, quay.io, registry.k8s.io, gcr.io,
    public.ecr.aws and mcr.microsoft.com anonymously.
    """

    EXAMPLES: ClassVar[str] = """
[[upstream]]
name = "ghcr.io"
url = "https://ghcr.io"

# A tier: this upstream is another ocicache (a regional mirror), or any
# mirror that reads containerd's ?ns=. Every request carries
# ?ns=<name> (or ns below), so one regional serves every registry.
# [[upstream]]
# name = "quay.io"
# url = "http://regional.internal:5000"
# kind = "mirror"                     # default "registry"
# ns = "quay.io"                      # default: name
# A static bearer token for the regional's [auth] tokens_file (one line),
# from a file or an environment variable; or username + password_file.
# token_file = "/etc/ocicache/regional.token"

[[upstream]]
name = "registry.internal:5000"
url = "https://registry.internal:5000"
# A private CA for this upstream (PEM).
# ca_file = "/etc/ocicache/internal-ca.pem"
# Skip certificate verification: only when asked; logs a warning at start-up.
# tls_verify = false
"""
    """More tables for the example file: a second upstream, a mirror tier, a private registry."""

    name: str = key(REGISTRY_HOST, "The registry host clients ask for: ?ns=docker.io, or /v2/docker.io/...",
                    required="the registry host clients ask for, e.g. 'docker.io'", example="docker.io")
    url: DecodedURL = key(HttpURL("username and password_file or password_env"), "Where it really is.",
                          required="e.g. 'https://registry-1.docker.io'", example="https://registry-1.docker.io")
    default: bool = key(BOOLEAN, "Serves requests with neither ?ns= nor a host prefix; at most one upstream.",
                        default=False, example=True)
    username: str | None = key(Text(), "Credentials for the upstream: the user name.", example="mybot",
                               note="Optional credentials. A literal password is refused: give a file\n"
                                    "(its first line is the password) or an environment variable.")
    password_file: str | None = key(Text(), "A file whose first line is the password.",
                                    example="/etc/ocicache/dockerhub.password")
    password_env: str | None = key(Text(), "An environment variable holding the password.",
                                   example="OCICACHE_DOCKERHUB_PASSWORD")
    password: None = key(Refused("a literal password is not accepted; use password_file or password_env"), "")
    tag_ttl: float | None = key(Duration(), "This upstream's override of [cache] tag_ttl.", example="10m",
                                commented=False, shown="[cache] tag_ttl")
    ca_file: str | None = key(Text(), "A private CA for this upstream (PEM).", example="/etc/ocicache/internal-ca.pem")
    tls_verify: bool = key(BOOLEAN, "Verify the upstream's certificate; false logs a warning at start-up.",
                           default=_DEFAULTS.tls_verify)
    max_downloads: int = key(Integer(1), "Fetches at once from this upstream, within [cache] max_downloads.",
                             default=_DEFAULTS.max_downloads)
    connect_timeout: float = key(POSITIVE, "How long a connection may take.", default=_DEFAULTS.connect_timeout)
    response_timeout: float = key(
        POSITIVE, "How long the upstream may take to answer, or go without a body byte.",
        default=_DEFAULTS.response_timeout,
        note="""How long the upstream may take to answer (or go without a body byte):
past it the request fails, and a cached tag is served stale ("timeout").""")
    kind: str = key(Choice(("registry", "mirror")), '"mirror": another ocicache (or a mirror that reads ?ns=).',
                    default=_DEFAULTS.kind)
    ns: str | None = key(REGISTRY_HOST, "For a mirror: the registry sent as ?ns=.", example="quay.io",
                         shown="name")
    token_file: str | None = key(Text(), "A file whose first line is a static bearer token for the upstream.",
                                 example="/etc/ocicache/regional.token")
    token_env: str | None = key(Text(), "An environment variable holding that token.",
                                example="OCICACHE_REGIONAL_TOKEN")
    token: None = key(Refused("a literal secret is not accepted; use token_file or token_env"), "")
    include: tuple[str, ...] | None = key(
        REPOSITORY_GLOBS, "Repositories that may be pulled (globs: * stops at /, ** does not); unset: all.",
        example=["alpine", "debian", "ourorg/**"],
        note="""Who may pull what from this upstream, for everyone. Globs: * stops at /,
** does not. Matched against the upstream's repository name, and on Docker
Hub also against the short name of an official image ("alpine" is
"library/alpine"). Unset: everything.""")
    exclude: tuple[str, ...] | None = key(REPOSITORY_GLOBS, "Repositories that may not be pulled.",
                                          example=["ourorg/secret-*"])
    tags: tuple[str, ...] | None = key(_TAG_GLOBS, "Tags that may be pulled by tag; unset: all.",
                                       example=["v*", "latest"])
    digest_only: bool = key(BOOLEAN, "Manifests by digest only: tags and tag lists get 403.",
                            default=_DEFAULTS.digest_only)
    quota_floor: int | float = key(
        CountOrPercent(), "Pulls left (or a percentage of the limit) below which tags are revalidated less.",
        default=_DEFAULTS.quota_floor, note="""Docker Hub quota: while the upstream's ratelimit-remaining is below
quota_floor (a number of pulls, or a percentage of ratelimit-limit; 0:
never), its tags are revalidated only every quota_stretch instead of tag_ttl.""")
    quota_stretch: float = key(POSITIVE, "The tag TTL while below quota_floor.", default=_DEFAULTS.quota_stretch)
    stale_on: frozenset[str] = key(
        Subset(STALE_FAILURES), "The failures a cached tag is served stale for.", default=_STALE.stale_on,
        note="""Stale-if-error: when revalidating a cached tag (or refreshing a tag list)
fails, the last known one is served, with "Warning: 110", for these
failures: "connect" (refused, no such host, connect timeout), "timeout"
(no answer or body in time), "5xx", "protocol" (an unusable answer: a bad
redirect, a body cut short, an unexpected status), "429" (rate limited),
"401" and "403" (credentials or access refused).""")
    max_stale: float = key(Duration(maximum=MAX_STALE_LIMIT,
                                    too_long="must be at most 30d (tag rows are kept 30 days)"),
                           "No tag is served stale longer than this past its last revalidation.",
                           default=_STALE.max_stale)
    on_404: str = key(Choice(("keep", "forget")), '"keep": a 404 for a cached tag serves it stale; "forget": 404.',
                      default=_STALE.on_404)

    proxy: str | None = key(ProxyURL(empty=True), 'This upstream\'s outbound proxy (see [proxy]); "": direct.',
                            example="http://proxy.internal:3128", shown="[proxy] url")

    offline: bool = key(BOOLEAN, "Never call it: serve only what the cache holds (a SIGHUP applies a change).",
                        default=False)

    def check(self) -> None:
        """The rules between keys, before anything is read."""
        self.check_program()
        passwords = (self.password_file, self.password_env)
        if self.has_program and (self.username, *passwords) != (None,) * 3:
            raise Invalid("credential_helper or credential_command gives the username too;"
                          " drop username, password_file and password_env")
        if None not in passwords:
            raise Invalid("set password_file or password_env, not both")
        if self.username is not None and passwords == (None, None):
            raise Invalid("username needs password_file or password_env")
        if self.username is None and passwords != (None, None):
            raise Invalid("a password needs a username")
        if self.ns is not None and self.kind != "mirror":
            raise Invalid("only a kind = 'mirror' upstream takes ns", ("ns",))
        if self.token_file is not None and self.token_env is not None:
            raise Invalid("set token_file or token_env, not both", ("token_file",))
        credentials = self.username is not None or self.has_program
        if credentials and (self.token_file, self.token_env) != (None, None):
            raise Invalid("set token_file or token_env, or credentials, not both")
        if self.digest_only and self.tags:
            raise Invalid("digest_only refuses every tag; set one or the other", ("tags",))

    def build(self, files: Files, where: str) -> UpstreamConfig:
        credentials = None
        if self.username is not None:
            password = files.secret("password", self.password_file, self.password_env)
            credentials = Credentials(self.username, password or "")
        token = files.secret("token", self.token_file, self.token_env)
        if token is not None and not _B64TOKEN.fullmatch(token):
            raise Invalid("the token must be one line of RFC 6750 token characters", ("token",))
        return UpstreamConfig(
            name=self.name, url=self.url, default=self.default, credentials=credentials, tag_ttl=self.tag_ttl,
            ca_file=files.readable("ca_file", self.ca_file), tls_verify=self.tls_verify,
            max_downloads=self.max_downloads, connect_timeout=self.connect_timeout,
            response_timeout=self.response_timeout, include=self.include or (), exclude=self.exclude or (),
            tags=self.tags or (), digest_only=self.digest_only, credential_command=self.program(self.url),
            kind=self.kind, ns=self.ns, token=token, quota_floor=self.quota_floor, quota_stretch=self.quota_stretch,
            stale=StalePolicy(self.stale_on, self.max_stale, self.on_404), proxy=self.proxy,
            offline=self.offline,
        )
