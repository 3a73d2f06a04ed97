"""
Where an upstream's credentials come from: the config (C{username} with
C{password_file} or C{password_env}, read at load), or a program run when
they are needed and again after C{credential_ttl}, which is how ECR, GCR
and ACR tokens are usually obtained.

The program speaks the docker-credential-helpers protocol's C{get}: the
server URL on its standard input, C{{"Username": ..., "Secret": ...}} on
its standard output.  It runs through the reactor (never blocking it),
with a timeout and a bound on its output; its output is never logged, and
a program that fails is one warning, after which requests that need the
credentials fail with C{502} for a short while before it is tried again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._ops._config import CredentialCommand, Credentials, UpstreamConfig
from ._errors import UpstreamUnavailable

__all__ = [
    "CredentialHelper",
    "CredentialSource",
    "CredentialsUnavailable",
    "StaticCredentials",
    "credentials_for",
]

log = Logger()

HELPER_TIMEOUT = 30.0
"""Seconds a credential program may take before it is killed."""

MAX_OUTPUT = 64 << 10
"""Bytes a credential program may print; more is a failure (and a kill)."""

RETRY_AFTER_FAILURE = 10.0
"""Seconds after a failed run during which requests fail at once, rather than each running it again."""


class CredentialsUnavailable(UpstreamUnavailable):
    """
    The upstream's credential program failed: ocicache cannot authenticate
    to it now (C{502}, and stale-if-error where the cache has a copy).
    """


class CredentialSource(Protocol):
    """Gives an upstream's current credentials."""

    async def get(self) -> Credentials | None:
        """The credentials to use now, or C{None} for anonymous access."""


class StaticCredentials:
    """Credentials from the config file, or none."""

    def __init__(self, credentials: Credentials | None) -> None:
        self._credentials = credentials

    async def get(self) -> Credentials | None:
        return self._credentials


class _Failed(Exception):
    """Why one run of a credential program gave no credentials (safe to log)."""


class _Collect(ProcessProtocol):
    """
    Writes the server URL to the program, keeps at most C{MAX_OUTPUT}
    bytes of what it prints, ignores its standard error, and fires
    C{ended} with the exit status, or a L{_Failed}.
    """

    def __init__(self, server_url: bytes) -> None:
        self._server_url = server_url
        self.output = bytearray()
        self.ended: Deferred[int] = Deferred()
        self.process: IProcessTransport | None = None

    def connectionMade(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(self._server_url)
            transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if self.ended.called:
            return
        if len(self.output) + len(data) > MAX_OUTPUT:
            self.stop(_Failed(f"printed more than {MAX_OUTPUT} bytes"))
            return
        self.output += data

    def errReceived(self, data: bytes) -> None:
        # Not logged: a helper's diagnostics may quote what it read.
        pass

    def processEnded(self, reason: Failure) -> None:
        if not self.ended.called:
            code = getattr(reason.value, "exitCode", None)
            signal = getattr(reason.value, "signal", None)
            if code is None:
                self.ended.errback(_Failed(f"was killed by signal {signal}"))
            else:
                self.ended.callback(code)

    def stop(self, why: _Failed) -> None:
        """Give up on the program: kill it, close its pipes, fail now."""
        if self.ended.called:
            return
        self.ended.errback(why)
        transport = self.transport
        if transport is not None:
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            # A grandchild holding the pipes must not keep us waiting.
            transport.loseConnection()


class CredentialHelper:
    """
    Credentials printed by a program, kept for C{command.ttl} seconds.
    Concurrent requests for them share one run.
    """

    def __init__(
        self,
        command: CredentialCommand,
        upstream: str,
        clock: IReactorTime,
        processes: IReactorProcess,
        environ: Mapping[str, str] | None = None,
        timeout: float = HELPER_TIMEOUT,
    ) -> None:
        self._command = command
        self._upstream = upstream
        self._clock = clock
        self._processes = processes
        self._environ = dict(os.environ if environ is None else environ)
        self._timeout = timeout
        self._credentials: Credentials | None = None
        self._expires = 0.0
        self._failed_until = 0.0
        self._waiters: list[Deferred[Credentials]] = []

    def __repr__(self) -> str:
        return f"<CredentialHelper {self._command.argv[0]!r} for {self._upstream}>"

    async def get(self) -> Credentials:
        now = self._clock.seconds()
        if self._credentials is not None and now < self._expires:
            return self._credentials
        if now < self._failed_until:
            raise CredentialsUnavailable(f"{self._upstream}: the credential helper failed")
        waiter: Deferred[Credentials] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._refresh()).addBoth(self._deliver)
        return await waiter

    def _deliver(self, result: Credentials | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _refresh(self) -> Credentials:
        try:
            credentials = await self._run()
        except _Failed as e:
            self._credentials = None
            self._failed_until = self._clock.seconds() + RETRY_AFTER_FAILURE
            log.warn("Upstream {upstream}: the credential program {program} {why}; requests that need its"
                     " credentials fail for {retry:.0f}s, then it is run again",
                     upstream=self._upstream, program=self._command.argv[0], why=str(e),
                     retry=RETRY_AFTER_FAILURE)
            raise CredentialsUnavailable(f"{self._upstream}: the credential helper failed") from None
        self._credentials = credentials
        self._expires = self._clock.seconds() + self._command.ttl
        return credentials

    async def _run(self) -> Credentials:
        program = self._command.argv[0]
        if "/" not in program:
            found = shutil.which(program, path=self._environ.get("PATH", os.defpath))
            if found is None:
                raise _Failed("is not on $PATH")
            program = found
        collect = _Collect(self._command.server_url.encode("utf-8") + b"\n")
        try:
            self._processes.spawnProcess(collect, program, list(self._command.argv), env=self._environ)
        except OSError as e:
            raise _Failed(f"could not be started: {e.strerror}") from None
        timer: IDelayedCall = self._clock.callLater(
            self._timeout, collect.stop, _Failed(f"took more than {self._timeout:.0f}s and was killed"))
        try:
            status = await collect.ended
        finally:
            if timer.active():
                timer.cancel()
        if status != 0:
            raise _Failed(f"exited with status {status}")
        return _parse_answer(bytes(collect.output))


def _parse_answer(output: bytes) -> Credentials:
    """
    The docker-credential-helpers C{get} answer: a JSON object with string
    C{Username} and C{Secret} (its C{ServerURL} is not needed).
    """
    try:
        answer = json.loads(output)
    except (ValueError, UnicodeDecodeError):
        raise _Failed("printed no JSON") from None
    if not isinstance(answer, dict):
        raise _Failed("printed JSON that is not an object")
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str) or not username or not secret:
        raise _Failed("printed no Username and Secret")
    if username == "<token>":
        # An identity token, for an OAuth2 refresh flow ocicache does not speak.
        raise _Failed("gave an identity token (Username \"<token>\"), which ocicache cannot use")
    return Credentials(username, secret)


def credentials_for(config: UpstreamConfig, reactor: IReactorTime) -> CredentialSource:
    """The credential source C{config} asks for."""
    if config.credential_command is not None:
        return CredentialHelper(config.credential_command, config.name, reactor, IReactorProcess(reactor))
    return StaticCredentials(config.credentials)
