"""
Upstream credentials from a program (L{ocicache._upstream._credentials}):
real executables written by the test, run through the real reactor, for
the docker-credential-helpers protocol, the cache lifetime, failures that
are one warning, and tokens that never outlive a rotated password.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from ocicache._ops._config import CredentialCommand, Credentials, parse_config
from ocicache._upstream._credentials import CredentialHelper, CredentialsUnavailable, StaticCredentials
from ocicache._upstream._tokens import TokenCache, TokenKey
from ocitest.fakes import Reactor

SECRET = "helper-secret-7f3a"


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    observer = _Warnings()
    globalLogPublisher.addObserver(observer)
    yield observer.seen
    globalLogPublisher.removeObserver(observer)


@implementer(ILogObserver)
class _Warnings:
    """The credential module's log lines, formatted."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "ocicache._upstream._credentials":
            self.seen.append(formatEvent(event))


def script(directory: str, name: str, body: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def helper(argv: tuple[str, ...], ttl: float = 60.0, timeout: float = 5.0,
           environ: dict[str, str] | None = None) -> CredentialHelper:
    command = CredentialCommand(argv=argv, ttl=ttl, server_url="https://registry.example")
    return CredentialHelper(command, "registry.example", reactor, reactor,
                            environ=environ, timeout=timeout)


def answering(tmp: str, secret: str = SECRET) -> str:
    """A helper that logs each run and what it read, and answers with C{secret}."""
    return script(tmp, "docker-credential-test", f"""
read url
echo "$1 $url" >> {tmp}/runs
printf '{{"ServerURL": "%s", "Username": "bot", "Secret": "{secret}"}}' "$url"
""")


def runs(tmp: str) -> list[str]:
    try:
        with open(os.path.join(tmp, "runs")) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


@pytest_twisted.ensureDeferred
async def test_a_helper_on_path_answers_the_protocol(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    answering(tmp)
    source = helper(("docker-credential-test", "get"), environ={"PATH": f"{tmp}:/usr/bin:/bin"})
    assert await source.get() == Credentials("bot", SECRET)
    # "get" as its argument, the server URL on its standard input.
    assert runs(tmp) == ["get https://registry.example"]
    assert SECRET not in repr(source) and SECRET not in repr(await source.get())


@pytest_twisted.ensureDeferred
async def test_answers_are_kept_for_the_ttl_and_shared(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    source = helper((answering(tmp), "get"))
    results = await gatherResults([Deferred.fromCoroutine(source.get()) for _ in range(3)])
    assert results == [Credentials("bot", SECRET)] * 3
    await source.get()
    assert len(runs(tmp)) == 1, "concurrent and later requests share one run"


@pytest_twisted.ensureDeferred
async def test_the_program_runs_again_after_the_ttl() -> None:
    clock = Reactor()
    calls: list[object] = []

    class Processes:
        def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
            calls.append(args)
            protocol.makeConnection(_Transport())
            protocol.outReceived(b'{"Username": "bot", "Secret": "s%d"}' % len(calls))
            from twisted.internet.error import ProcessDone
            from twisted.python.failure import Failure
            protocol.processEnded(Failure(ProcessDone(0)))

    command = CredentialCommand(argv=("/bin/true",), ttl=60.0, server_url="https://registry.example")
    source = CredentialHelper(command, "registry.example", clock, Processes())  # type: ignore[arg-type]
    assert await source.get() == Credentials("bot", "s1")
    clock.advance(59)
    assert await source.get() == Credentials("bot", "s1")
    clock.advance(2)
    assert await source.get() == Credentials("bot", "s2")


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def closeStdin(self) -> None:
        pass


@pytest.mark.parametrize(("body", "why"), [
    ("exit 3\n", "exited with status 3"),
    ("echo 'not json'\n", "printed no JSON"),
    ("echo '[1]'\n", "printed JSON that is not an object"),
    ("echo '{\"Username\": \"bot\"}'\n", "printed no Username and Secret"),
    ("echo '{\"Username\": \"<token>\", \"Secret\": \"refresh\"}'\n", "gave an identity token"),
    ("head -c 100000 /dev/zero | tr '\\0' x\n", "printed more than 65536 bytes"),
    ("exec sleep 30\n", "took more than 1s and was killed"),
])
@pytest_twisted.ensureDeferred
async def test_a_failing_program_is_one_warning(tmp_path: Any, warnings: list[str], body: str, why: str) -> None:
    tmp = str(tmp_path)
    path = script(tmp, "helper", f"read url\necho run >> {tmp}/runs\necho {SECRET} >&2\n{body}")
    source = helper((path,), timeout=1.0)
    with pytest.raises(CredentialsUnavailable) as raised:
        await source.get()
    assert str(raised.value) == "registry.example: the credential helper failed"
    # Within the back-off, requests fail at once, without another run.
    with pytest.raises(CredentialsUnavailable):
        await source.get()
    assert len(runs(tmp)) == 1
    assert len(warnings) == 1, warnings
    assert why in warnings[0] and path in warnings[0]
    assert SECRET not in warnings[0]


@pytest_twisted.ensureDeferred
async def test_a_program_not_on_path(warnings: list[str]) -> None:
    source = helper(("docker-credential-nonesuch", "get"), environ={"PATH": "/nonexistent"})
    with pytest.raises(CredentialsUnavailable):
        await source.get()
    assert len(warnings) == 1 and "is not on $PATH" in warnings[0]


@pytest_twisted.ensureDeferred
async def test_static_credentials() -> None:
    assert await StaticCredentials(None).get() is None
    assert await StaticCredentials(Credentials("u", "p")).get() == Credentials("u", "p")


def test_a_rotated_password_gets_a_new_token() -> None:
    # Same realm, service, scope and user: the old token must not serve
    # the new password (nor the other way round).
    cache = TokenCache(Reactor())
    old = TokenKey("https://auth", "registry", "repository:a:pull", "bot", Credentials("bot", "old"))
    new = TokenKey("https://auth", "registry", "repository:a:pull", "bot", Credentials("bot", "new"))
    cache.put(old, "token-for-old", 300)
    assert cache.get(old) == "token-for-old"
    assert cache.get(new) is None
    assert "old" not in repr(old) and "new" not in repr(new)


# -- the config keys


def _upstream(**keys: Any) -> dict[str, Any]:
    return {"name": "registry.example", "url": "https://registry.example:5000/v2-prefix", **keys}


def test_credential_keys() -> None:
    config = parse_config({"upstream": [_upstream(credential_helper="ecr-login")]}, {})
    assert config.upstreams[0].credential_command == CredentialCommand(
        ("docker-credential-ecr-login", "get"), 900.0, "https://registry.example:5000")
    config = parse_config({"upstream": [_upstream(credential_command=["/opt/get-token", "--json"],
                                                  credential_ttl="5m")]}, {})
    assert config.upstreams[0].credential_command == CredentialCommand(
        ("/opt/get-token", "--json"), 300.0, "https://registry.example:5000")
    assert config.upstreams[0].credentials is None


@pytest.mark.parametrize(("keys", "message"), [
    ({"credential_helper": "../evil"}, "upstream[0].credential_helper: '../evil' is not a helper name"),
    ({"credential_helper": "a", "credential_command": ["/b"]},
     "upstream[0]: set credential_helper or credential_command, not both"),
    ({"credential_command": []}, "upstream[0].credential_command: expected a non-empty list"),
    ({"credential_command": ["rel/path"]}, "upstream[0].credential_command: 'rel/path' must be an absolute path"),
    ({"credential_ttl": "5m"}, "upstream[0].credential_ttl: needs credential_helper or credential_command"),
    ({"credential_helper": "a", "credential_ttl": "0s"}, "upstream[0].credential_ttl: must be positive"),
    ({"credential_helper": "a", "username": "u"}, "upstream[0]: credential_helper or credential_command gives"),
])
def test_credential_keys_are_validated(keys: dict[str, Any], message: str) -> None:
    from ocicache._ops._config import ConfigError

    with pytest.raises(ConfigError) as raised:
        parse_config({"upstream": [_upstream(**keys)]}, {})
    assert str(raised.value).startswith(message), str(raised.value)
