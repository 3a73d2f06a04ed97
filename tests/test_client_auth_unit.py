"""
Unit tests for client authentication: the C{[auth]} section and its files,
credentials parsing and challenges (L{ocicache._spec._auth}), the
verifiers of L{ocicache._identity} on a fake clock with a thread runner
the test drives, and the registry resource refusing before it routes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import attrs
import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc.jwk import ECKey, RSAKey
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from ocicache._daemon._listening import plain_and_reachable as _plain_and_reachable
from ocicache._identity import ANONYMOUS, Identity, IdentityKind, _htpasswd, _issuer, _oidc
from ocicache._identity._authenticator import PROOF_SECONDS, Authenticator, build_authenticator
from ocicache._identity._errors import Denied, Unauthenticated
from ocicache._identity._htpasswd import MEMO_SECONDS, Htpasswd
from ocicache._identity._issuer import TokenIssuer
from ocicache._identity._jwt import decode as jwt_decode
from ocicache._identity._jwt import peek
from ocicache._identity._oidc import MIN_REFRESH, RETRY, OIDCIssuer
from ocicache._ops._config import ConfigError, OIDCIssuerConfig, load_config, parse_config
from ocicache._ops._metrics import Metrics
from ocicache._spec._auth import (
    BasicCredentials,
    BearerCredentials,
    Challenge,
    InvalidAuthorization,
    format_challenge,
    parse_authorization,
    parse_www_authenticate,
)
from ocicache._storage._store import Store
from ocitest import REPO_ROOT
from ocitest.ops import htpasswd_line
from test_resources_unit import Server

T = TypeVar("T")

PASSWORD = "s3cret-password-for-alice"
TOKEN = "a-static-token-0123456789"


def result_of(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that finishes synchronously; its result or its exception."""
    d = Deferred.fromCoroutine(coroutine)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "did not finish"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


def run_now(f: Callable[..., T], *args: object) -> Deferred[T]:
    return succeed(f(*args))


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


# -- credentials and challenges (RFC 7617, RFC 6750, RFC 9110 §11.6.1)


def test_parse_authorization() -> None:
    assert parse_authorization(basic("alice", "pa:ss")) == BasicCredentials("alice", "pa:ss")
    assert parse_authorization(b"bAsIc " + base64.b64encode(b"u:")) == BasicCredentials("u", "")
    assert parse_authorization(b"Bearer abc.DEF-_~+/=") == BearerCredentials("abc.DEF-_~+/=")
    for bad in (b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon"), b"Bearer a b", b"Bearer ",
                b"Digest x", b"Basic " + base64.b64encode(b"u:\x00p"), b"Basic " + base64.b64encode(b"\xff:x")):
        with pytest.raises(InvalidAuthorization) as raised:
            parse_authorization(bad)
        secret = bad.split(b" ", 1)[-1].decode("latin-1")
        assert not secret or secret not in str(raised.value)


def test_credentials_keep_secrets_out_of_repr() -> None:
    assert "pw" not in repr(BasicCredentials("alice", "pw"))
    assert "tok" not in repr(BearerCredentials("tok"))


@given(st.dictionaries(st.sampled_from(["realm", "service", "scope", "error"]),
                       st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40), min_size=1))
def test_our_challenges_parse_back(params: dict[str, str]) -> None:
    header = format_challenge(Challenge("Bearer", params)).decode("utf-8")
    assert parse_www_authenticate([header]) == [Challenge("bearer", params)]


def test_format_challenge_quotes() -> None:
    challenge = Challenge("Bearer", {"realm": "http://h:5000/token", "service": 'a"b\\c', "scope": "x\r\ny"})
    assert format_challenge(challenge) == b'Bearer realm="http://h:5000/token",service="a\\"b\\\\c",scope="xy"'
    assert format_challenge(Challenge("Basic", {})) == b"Basic"


# -- [auth] in the configuration


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "htpasswd").write_text(htpasswd_line("alice", PASSWORD))
    digest = hashlib.sha256(b"hashed-token-0123456789").hexdigest()
    (tmp_path / "tokens").write_text(f"# comment\n\nci:{TOKEN}\nfarm:sha256:{digest}\n")
    (tmp_path / "jwks.json").write_text(json.dumps(
        {"keys": [RSAKey.generate_key(2048, auto_kid=True).as_dict(private=False)]}))
    key = ECKey.generate_key("P-256")
    (tmp_path / "key.pem").write_bytes(key.as_pem(private=True))
    return {name: str(tmp_path / name) for name in ("htpasswd", "tokens", "jwks.json", "key.pem")}


def auth(**keys: object) -> dict[str, object]:
    return {"auth": keys}


def test_no_auth_section_means_no_auth() -> None:
    assert parse_config({}, {}).auth is None


def test_auth_section(files: dict[str, str]) -> None:
    config = parse_config(auth(
        tokens_file=files["tokens"], htpasswd_file=files["htpasswd"], issue_tokens=True,
        token_realm="https://mirror.example/token", token_service="mirror", token_ttl="10m",
        token_key_file=files["key.pem"],
        oidc=[{"issuer": "https://token.actions.githubusercontent.com", "audience": "mirror",
               "jwks_url": "https://token.actions.githubusercontent.com/.well-known/jwks"},
              {"issuer": "https://gitlab.internal", "audience": "mirror", "jwks_file": files["jwks.json"]}],
    ), {}).auth
    assert config is not None
    assert [token.name for token in config.tokens] == ["ci", "farm"]
    assert config.tokens[0].digest == hashlib.sha256(TOKEN.encode()).digest()
    assert set(config.users) == {"alice"} and config.anonymous is False
    assert (config.issue_tokens, config.token_realm, config.token_service, config.token_ttl) == (
        True, "https://mirror.example/token", "mirror", 600.0)
    assert config.token_key is not None and config.token_key.startswith(b"-----BEGIN")
    assert [entry.issuer for entry in config.oidc] == ["https://token.actions.githubusercontent.com",
                                                       "https://gitlab.internal"]
    assert config.oidc[1].jwks is not None and config.oidc[1].jwks_url is None
    text = repr(config)
    assert TOKEN not in text and "$2b$" not in text and "BEGIN" not in text


@pytest.mark.parametrize("content, message", [
    ("ci:short\n", "auth.tokens_file: '{path}' line 1: token 'ci' must be at least 16 characters"),
    ("ci token without colon\n", "auth.tokens_file: '{path}' line 1: expected name:token"),
    (f"ci:{TOKEN}\nci:{TOKEN}x\n", "auth.tokens_file: '{path}' line 2: token name 'ci' appears twice"),
    (f"a:{TOKEN}\nb:{TOKEN}\n", "auth.tokens_file: '{path}' line 2: token 'b' is the same as an earlier one"),
    ("# nothing\n", "auth.tokens_file: '{path}' has no tokens"),
])
def test_bad_tokens_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        parse_config(auth(tokens_file=str(path)), {})
    assert str(raised.value).startswith(message.format(path=path))
    assert TOKEN not in str(raised.value)


@pytest.mark.parametrize("line, message", [
    ("alice:$apr1$abcdefgh$0123456789012345678901", "only bcrypt entries"),
    ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "only bcrypt entries"),
    ("alice:plaintext", "only bcrypt entries"),
    ("alice", "expected user:hash"),
])
def test_bad_htpasswd(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(auth(htpasswd_file=str(path)), {})
    assert str(raised.value).startswith(f"auth.htpasswd_file: '{path}' line 1:")
    assert message in str(raised.value)


@pytest.mark.parametrize("keys, message", [
    ({}, "auth: set tokens_file, htpasswd_file or [[auth.oidc]]"),
    ({"anonymous": True}, "auth: set tokens_file, htpasswd_file or [[auth.oidc]]"),
    ({"tokens_file": "/nonexistent"}, "auth.tokens_file: cannot read '/nonexistent'"),
    ({"htpasswd_file": "/nonexistent"}, "auth.htpasswd_file: cannot read '/nonexistent'"),
    ({"tokenfile": "x"}, "auth: unknown key(s): tokenfile"),
    ({"issue_tokens": "yes"}, "auth.issue_tokens: expected true or false"),
    ({"htpasswd_file": "{htpasswd}", "token_ttl": "2d", "issue_tokens": True}, "auth.token_ttl: must be at most 1d"),
    ({"htpasswd_file": "{htpasswd}", "token_ttl": "0s", "issue_tokens": True}, "auth.token_ttl: must be positive"),
    ({"htpasswd_file": "{htpasswd}", "token_realm": "http://x/token"},
     "auth.issue_tokens: token_realm and token_key_file need issue_tokens = true"),
    ({"htpasswd_file": "{htpasswd}", "issue_tokens": True, "token_realm": "ftp://x/token"},
     "auth.token_realm: 'ftp://x/token' must be an http:// or https:// URL"),
    ({"htpasswd_file": "{htpasswd}", "issue_tokens": True, "token_key_file": "{htpasswd}"},
     "auth.token_key_file: '{htpasswd}' is not an unencrypted PEM private key"),
    ({"oidc": [{"issuer": "https://i", "audience": "a"}]},
     "auth.oidc[0].jwks_url: set jwks_url or jwks_file, one of them"),
    ({"oidc": [{"issuer": "https://i", "audience": "a", "jwks_url": "https://i/k", "jwks_file": "{jwks.json}"}]},
     "auth.oidc[0].jwks_url: set jwks_url or jwks_file, one of them"),
    ({"oidc": [{"audience": "a", "jwks_url": "https://i/k"}]}, "auth.oidc[0].issuer: required"),
    ({"oidc": [{"issuer": "https://i", "jwks_url": "https://i/k"}]}, "auth.oidc[0].audience: required"),
    ({"oidc": [{"issuer": "https://i", "audience": "a", "jwks_file": "{htpasswd}"}]},
     "auth.oidc[0].jwks_file: '{htpasswd}' is not JSON"),
    ({"oidc": [{"issuer": "https://i", "audience": "a", "jwks_url": "https://i/k"},
               {"issuer": "https://i", "audience": "b", "jwks_url": "https://i/k"}]},
     "auth.oidc[1].issuer: 'https://i' is configured twice"),
])
def test_bad_auth_keys(files: dict[str, str], keys: dict[str, Any], message: str) -> None:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            for name, path in files.items():
                value = value.replace("{" + name + "}", path)
            return value
        if isinstance(value, list):
            return [fill(entry) for entry in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    with pytest.raises(ConfigError) as raised:
        parse_config(auth(**fill(keys)), {})
    assert str(raised.value).startswith(fill(message)), str(raised.value)


def test_a_jwks_with_a_symmetric_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(ConfigError) as raised:
        parse_config(auth(oidc=[{"issuer": "https://i", "audience": "a", "jwks_file": str(path)}]), {})
    assert "a JWKS key must be an RSA, EC or OKP key" in str(raised.value)


def test_the_example_file_documents_every_auth_key() -> None:
    text = (Path(REPO_ROOT) / "etc" / "ocicache.toml").read_text()
    section = text[text.index("# [auth]"):text.index("[[upstream]]")]
    keys = {*attrs.fields_dict(OIDCIssuerConfig), "tokens_file", "htpasswd_file", "token_key_file",
            "jwks_file", "anonymous", "issue_tokens", "token_realm", "token_service", "token_ttl"}
    keys -= {"jwks", "oidc"}
    for key in keys:
        assert f"# {key} = " in section, f"[auth] {key} is not in etc/ocicache.toml"
    assert "# [[auth.oidc]]" in section
    assert load_config(str(Path(REPO_ROOT) / "etc" / "ocicache.toml"), {}).auth is None


# -- htpasswd: bcrypt in a thread, memoised, coalesced


class Threads:
    """A thread runner whose work runs when the test says."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Callable[..., Any], tuple[object, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: object) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, f, args))
        return d

    def run_all(self) -> int:
        ran = 0
        while self.pending:
            d, f, args = self.pending.pop(0)
            d.callback(f(*args))
            ran += 1
        return ran


def users() -> dict[str, bytes]:
    return {"alice": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))}


def test_concurrent_checks_share_one_bcrypt_and_success_is_remembered() -> None:
    clock, threads = Clock(), Threads()
    checks: list[None] = []
    htpasswd = Htpasswd(users(), clock, threads, lambda: checks.append(None))
    waiting = [Deferred.fromCoroutine(htpasswd.check("alice", PASSWORD)) for _ in range(10)]
    assert threads.run_all() == 1
    results: list[Any] = []
    for d in waiting:
        d.addBoth(results.append)
    assert results == [Identity(IdentityKind.USER, "alice")] * 10
    # Remembered: no thread at all.
    assert result_of(htpasswd.check("alice", PASSWORD)) == Identity(IdentityKind.USER, "alice")
    assert threads.pending == [] and len(checks) == 1
    clock.advance(MEMO_SECONDS + 1)
    later = Deferred.fromCoroutine(htpasswd.check("alice", PASSWORD))
    assert threads.run_all() == 1 and len(checks) == 2
    assert later.called


def test_a_failed_check_is_not_remembered() -> None:
    clock, threads = Clock(), Threads()
    htpasswd = Htpasswd(users(), clock, threads)
    for _ in range(2):
        failing = Deferred.fromCoroutine(htpasswd.check("alice", "wrong"))
        assert threads.run_all() == 1
        failures: list[Failure] = []
        failing.addErrback(failures.append)
        assert failures and failures[0].check(Unauthenticated)
    # An unknown user costs a bcrypt too (against a dummy hash): no timing tells them apart.
    unknown = Deferred.fromCoroutine(htpasswd.check("mallory", PASSWORD))
    assert threads.run_all() == 1
    unknown.addErrback(lambda f: f.trap(Unauthenticated))
    # Empty credentials (what clients send when they have none) cost nothing.
    empty = Deferred.fromCoroutine(htpasswd.check("", ""))
    assert threads.pending == []
    empty.addErrback(lambda f: f.trap(Unauthenticated))


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_htpasswd, "MEMO_SIZE", 3)
    clock = Clock()
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))
    htpasswd = Htpasswd({f"u{i}": hashed for i in range(5)}, clock, run_now)
    for i in range(5):
        result_of(htpasswd.check(f"u{i}", "pw"))
    assert len(htpasswd._memo) == 3


# -- ocicache's own tokens


def test_issued_tokens_verify_until_they_expire() -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    issuer = TokenIssuer("mirror", 300, None, clock)
    identity = Identity(IdentityKind.OIDC, "repo:org/app", {"repository": "org/app"})
    issued = issuer.issue(identity, [{"type": "repository", "name": "library/alpine", "actions": ["pull"]}])
    assert issued.expires_in == 300 and issued.issued_at == "2027-01-15T08:00:00Z"
    assert issuer.verify(issued.token) == (identity, 1_800_000_300.0)
    assert "token" not in repr(issued).replace("IssuedToken", "")
    clock.advance(300 + 61)
    with pytest.raises(Unauthenticated, match="expired"):
        issuer.verify(issued.token)
    # Never past the credentials it was swapped for.
    short = issuer.issue(identity, [], not_after=clock.seconds() + 30)
    assert short.expires_in == 30
    with pytest.raises(Unauthenticated):
        TokenIssuer("other", 300, None, clock).verify(short.token)


def test_tokens_signed_with_a_key_file(tmp_path: Path) -> None:
    pem = RSAKey.generate_key(2048).as_pem(private=True)
    clock = Clock()
    clock.advance(1_800_000_000)
    one, two = TokenIssuer("mirror", 300, pem, clock), TokenIssuer("mirror", 300, pem, clock)
    token = one.issue(Identity(IdentityKind.USER, "alice"), []).token
    assert peek(token) is not None and peek(token).header["alg"] == "RS256"  # type: ignore[union-attr]
    # Another process (or a reload) with the same key accepts it.
    assert two.verify(token)[0] == Identity(IdentityKind.USER, "alice")


# -- OIDC: the JWKS, fetched, cached, refreshed within bounds


class Fetcher:
    def __init__(self, keys: list[RSAKey]) -> None:
        self.keys = keys
        self.urls: list[str] = []
        self.fail = False

    def __call__(self, url: str) -> Deferred[bytes]:
        self.urls.append(url)
        if self.fail:
            return Deferred.fromCoroutine(self._fail())
        return succeed(json.dumps({"keys": [key.as_dict(private=False) for key in self.keys]}).encode())

    async def _fail(self) -> bytes:
        raise ConnectionRefusedError()


def mint(key: RSAKey, clock: Clock, **claims: Any) -> str:
    from joserfc import jwt

    now = int(clock.seconds())
    body = {"iss": "https://ci", "aud": "mirror", "sub": "job", "exp": now + 300, "iat": now, **claims}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, body, key, algorithms=["RS256"])


def verify(issuer: OIDCIssuer, token: str) -> Identity:
    unverified = peek(token)
    assert unverified is not None
    identity, _ = result_of(issuer.verify(token, unverified))
    return identity


def test_oidc_jwks_refresh_is_bounded() -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    first, second, stranger = (RSAKey.generate_key(2048, auto_kid=True) for _ in range(3))
    fetch = Fetcher([first])
    issuer = OIDCIssuer(OIDCIssuerConfig("https://ci", "mirror", jwks_url="https://ci/jwks"), clock, fetch)
    identity = verify(issuer, mint(first, clock, repository="org/app", run_number=3))
    assert identity == Identity(IdentityKind.OIDC, "job", {"iss": "https://ci", "aud": "mirror", "sub": "job",
                                                          "repository": "org/app"})
    verify(issuer, mint(first, clock))
    assert len(fetch.urls) == 1
    # Rotation: an unknown kid makes one fetch, then none for MIN_REFRESH.
    fetch.keys = [first, second]
    verify(issuer, mint(second, clock))
    assert len(fetch.urls) == 2
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            verify(issuer, mint(stranger, clock))
    assert len(fetch.urls) == 2
    clock.advance(MIN_REFRESH)
    with pytest.raises(Unauthenticated):
        verify(issuer, mint(stranger, clock))
    assert len(fetch.urls) == 3
    # A failing issuer: the keys it had stay in use.
    fetch.fail = True
    clock.advance(_oidc.MAX_AGE)
    verify(issuer, mint(second, clock))
    assert len(fetch.urls) == 4
    verify(issuer, mint(second, clock))
    assert len(fetch.urls) == 4
    clock.advance(RETRY)
    verify(issuer, mint(second, clock))
    assert len(fetch.urls) == 5


@pytest.mark.parametrize("claims, message", [
    ({"aud": "elsewhere"}, "another audience"),
    ({"iss": "https://not-ci"}, "configured issuer"),
    ({"exp": 1}, "expired"),
    ({"exp": None}, "no expiry"),
    ({"nbf": 1_800_000_000 + 3600}, "not valid yet"),
    ({"sub": ""}, "no subject"),
])
def test_oidc_refusals(claims: dict[str, Any], message: str) -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    key = RSAKey.generate_key(2048, auto_kid=True)
    jwks = {"keys": [key.as_dict(private=False)]}
    issuer = OIDCIssuer(OIDCIssuerConfig("https://ci", "mirror", jwks=jwks), clock, None)
    with pytest.raises(Unauthenticated, match=message):
        verify(issuer, mint(key, clock, **claims))


# -- the authenticator


def authenticator(tmp_path: Path, clock: Clock | None = None, **keys: object) -> Authenticator:
    (tmp_path / "htpasswd").write_text(htpasswd_line("alice", PASSWORD))
    (tmp_path / "tokens").write_text(f"ci:{TOKEN}\n")
    config = parse_config(auth(htpasswd_file=str(tmp_path / "htpasswd"), tokens_file=str(tmp_path / "tokens"),
                               **keys), {}).auth
    if clock is None:
        clock = Clock()
        clock.advance(1_800_000_000)
    return build_authenticator(config, clock, run_now, metrics=Metrics())


def test_without_auth_everyone_is_anonymous() -> None:
    open_door = build_authenticator(None, Clock(), run_now)
    assert not open_door.enabled
    assert result_of(open_door.authenticate(None)) is ANONYMOUS
    assert result_of(open_door.authenticate(b"Bearer whatever")) is ANONYMOUS


def test_credentials_the_authenticator_takes(tmp_path: Path) -> None:
    a = authenticator(tmp_path, issue_tokens=True)
    assert result_of(a.authenticate(basic("alice", PASSWORD))) == Identity(IdentityKind.USER, "alice")
    assert result_of(a.authenticate(b"Bearer " + TOKEN.encode())) == Identity(IdentityKind.TOKEN, "ci")
    # A static token as a Basic password: under its own name only.
    assert result_of(a.authenticate(basic("ci", TOKEN))) == Identity(IdentityKind.TOKEN, "ci")
    with pytest.raises(Unauthenticated):
        result_of(a.authenticate(basic("someone", TOKEN)))
    for refused in (None, b"Bearer nope", basic("alice", "wrong"), b"Negotiate xyz"):
        with pytest.raises(Unauthenticated):
            result_of(a.authenticate(refused))
    # The token flow: primary credentials in, ocicache's token out; a
    # token of ocicache's own is not swapped again.
    identity, not_after = result_of(a.authenticate_for_token(basic("alice", PASSWORD)))
    token = a.issue(identity, ["repository:library/alpine:pull,push", "repository:../x:pull"]).token
    assert result_of(a.authenticate(b"Bearer " + token.encode())) == identity
    with pytest.raises(Denied):
        result_of(a.authenticate_for_token(b"Bearer " + token.encode()))
    claims = peek(token)
    assert claims is not None
    assert claims.claims["access"] == [{"type": "repository", "name": "library/alpine", "actions": ["pull"]}]
    assert PASSWORD not in repr(a) and TOKEN not in repr(a)


def test_anonymous_allowed_but_wrong_credentials_refused(tmp_path: Path) -> None:
    a = authenticator(tmp_path, anonymous=True)
    assert result_of(a.authenticate(None)) is ANONYMOUS
    with pytest.raises(Unauthenticated):
        result_of(a.authenticate(basic("alice", "typo")))


def test_challenges(tmp_path: Path) -> None:
    assert authenticator(tmp_path).challenge("http://h") == Challenge("Basic", {"realm": "ocicache"})
    flow = authenticator(tmp_path, issue_tokens=True, token_service="mirror")
    assert flow.challenge("http://h:5000", "repository:library/alpine:pull") == Challenge(
        "Bearer", {"realm": "http://h:5000/token", "service": "mirror", "scope": "repository:library/alpine:pull"})
    fixed = authenticator(tmp_path, issue_tokens=True, token_realm="https://mirror.example/token")
    assert fixed.challenge("http://h:5000").params["realm"] == "https://mirror.example/token"


# -- the registry resource: authenticated before it routes


def test_the_resource_refuses_before_any_lookup(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "cache"))
    store.prepare()
    server = Server(store)
    server.services.authenticator = authenticator(tmp_path, issue_tokens=True)
    digest = "sha256:" + "a" * 64
    response = server.get(f"/v2/library/alpine/blobs/{digest}?ns=docker.io", {"Host": "mirror:5000"})
    assert response.status == 401 and response.error_code() == "UNAUTHORIZED"
    assert response.headers[b"www-authenticate"] == (
        b'Bearer realm="http://mirror:5000/token",service="ocicache",scope="repository:library/alpine:pull"')
    head = server.get("/v2/", {"Host": "mirror:5000"}, method="HEAD")
    assert head.status == 401 and head.body == b""
    assert head.headers[b"www-authenticate"] == b'Bearer realm="http://mirror:5000/token",service="ocicache"'
    # A Host that is no host name is not echoed into the realm.
    odd = server.get("/v2/", {"Host": 'evil"\\'})
    assert b"evil" not in odd.headers[b"www-authenticate"]
    assert odd.headers[b"www-authenticate"].startswith(b'Bearer realm="http://10.0.0.1:')  # the listening address
    assert server.blobs.lookups == []
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert server.get("/v2/", bearer).status == 200
    assert server.get(f"/v2/library/alpine/blobs/{digest}", bearer).error_code() == "BLOB_UNKNOWN"
    assert server.blobs.lookups == [("library/alpine", digest)]


def test_a_verified_jwt_is_checked_once_a_minute_and_never_past_its_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    a = authenticator(tmp_path, clock, issue_tokens=True, token_ttl="90s")
    identity, _ = result_of(a.authenticate_for_token(basic("alice", PASSWORD)))
    header = b"Bearer " + a.issue(identity, []).token.encode()
    decoded: list[str] = []
    real_decode = jwt_decode

    def counting(token: str, key: Any) -> Any:
        decoded.append(token)
        return real_decode(token, key)

    monkeypatch.setattr(_issuer, "decode", counting)
    for _ in range(50):
        assert result_of(a.authenticate(header)) == identity
    assert len(decoded) == 1
    clock.advance(PROOF_SECONDS)
    assert result_of(a.authenticate(header)) == identity
    assert len(decoded) == 2
    # The memo holds it to min(exp, a minute on): past its expiry (and the
    # leeway), it is checked again, and refused.
    clock.advance(30 + 61)
    with pytest.raises(Unauthenticated, match="expired"):
        result_of(a.authenticate(header))
    # The token endpoint never takes it from the memo.
    with pytest.raises(Denied):
        result_of(a.authenticate_for_token(header))


# -- the token endpoint


def test_the_token_endpoint(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "cache"))
    store.prepare()
    server = Server(store)
    assert server.get("/token").error_code() == "UNSUPPORTED"  # no [auth]: no endpoint
    server.services.authenticator = authenticator(tmp_path, issue_tokens=True)
    credentials = {"Authorization": basic("alice", PASSWORD).decode()}
    answer = server.get("/token?service=ocicache&scope=repository:library/alpine:pull", credentials)
    assert answer.status == 200 and answer.headers[b"cache-control"] == b"no-store"
    body = answer.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["expires_in"] == 300
    refused = server.get("/token", {"Authorization": basic("alice", "wrong").decode()})
    assert refused.status == 401 and refused.headers[b"www-authenticate"] == b'Basic realm="ocicache"'
    assert PASSWORD not in refused.body.decode() and "wrong" not in refused.body.decode()
    assert server.get("/token/more", credentials).status == 404
    head = server.get("/token", credentials, method="HEAD")
    assert head.status == 405 and head.headers[b"allow"] == b"GET"


@pytest.mark.parametrize("listen, warned", [
    ("tcp:5000:interface=127.0.0.1", False), ("tcp6:5000:interface=\\:\\:1", False),
    ("tcp:5000", True), ("tcp:5000:interface=0.0.0.0", True), ("tcp6:5000:interface=\\:\\:", True),
    ("ssl:5443:privateKey=k.pem:certKey=c.pem", False), ("systemd:domain=INET:index=0", False),
])
def test_clear_text_listeners_are_warned_about(listen: str, warned: bool) -> None:
    assert _plain_and_reachable(listen) is warned
