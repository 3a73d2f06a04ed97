"""
Basic credentials checked against htpasswd's bcrypt entries.

bcrypt is slow on purpose (tens of milliseconds at the usual cost), so a
check runs in a thread, never on the reactor, and at most
L{MAX_CONCURRENT} at once.  One pull sends the same credentials with every
manifest and blob request: a check that succeeded is remembered for
L{MEMO_SECONDS} (at most L{MEMO_SIZE} of them), and concurrent checks of
the same credentials share one bcrypt.  What is remembered is an HMAC of
the user and password under a key made at start, never the password; a
failed check is not remembered.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any

import bcrypt
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ._errors import Unauthenticated
from ._identity import Identity, IdentityKind
from ._memo import Memo

__all__ = ["MAX_CONCURRENT", "MEMO_SECONDS", "MEMO_SIZE", "Htpasswd", "RunInThread"]

RunInThread = Callable[..., "Deferred[Any]"]
"""C{run(f, *args)}: C{f(*args)} in a thread, its result in a Deferred."""

MEMO_SECONDS = 60.0
MEMO_SIZE = 1024
MAX_CONCURRENT = 2

# A real bcrypt hash to check unknown users against, so that "no such
# user" costs as long as "wrong password" and does not tell them apart.
_DUMMY = bcrypt.hashpw(b"ocicache", bcrypt.gensalt(rounds=10))


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


class Htpasswd:
    """One htpasswd file's users, checked in threads, with the memo."""

    def __init__(
        self, users: Mapping[str, bytes], clock: IReactorTime, run_in_thread: RunInThread,
        on_check: Callable[[], None] = lambda: None,
    ) -> None:
        self._users = dict(users)
        self._clock = clock
        self._run = run_in_thread
        self._on_check = on_check
        self._key = os.urandom(32)
        self._memo: Memo[bool] = Memo(clock, MEMO_SIZE)
        self._checking: dict[bytes, list[Deferred[bool]]] = {}
        self._bound = DeferredSemaphore(MAX_CONCURRENT)

    def __repr__(self) -> str:
        return f"<Htpasswd: {len(self._users)} users>"

    def __bool__(self) -> bool:
        return bool(self._users)

    async def check(self, username: str, password: str) -> Identity:
        """
        The user's identity if C{password} is theirs.

        @raise Unauthenticated: If it is not, or there is no such user.
            An empty user or password is refused without a bcrypt
            (clients send them when they have no credentials).
        """
        if not username or not password:
            raise Unauthenticated("invalid username or password")
        key = hmac.new(self._key, f"{username}\0{password}".encode("utf-8", "surrogatepass"),
                       hashlib.sha256).digest()
        if self._memo.get(key):
            return Identity(IdentityKind.USER, username)
        waiting: Deferred[bool] = Deferred()
        waiters = self._checking.get(key)
        if waiters is None:
            self._checking[key] = [waiting]
            Deferred.fromCoroutine(self._bcrypt(username, password)).addBoth(self._done, key)
        else:
            waiters.append(waiting)
        if not await waiting:
            raise Unauthenticated("invalid username or password")
        return Identity(IdentityKind.USER, username)

    async def _bcrypt(self, username: str, password: str) -> bool:
        hashed = self._users.get(username)
        encoded = password.encode("utf-8", "surrogatepass")
        await self._bound.acquire()
        try:
            self._on_check()
            matched: bool = await self._run(_checkpw, encoded, hashed if hashed is not None else _DUMMY)
        finally:
            self._bound.release()
        return matched and hashed is not None

    def _done(self, result: bool | Failure, key: bytes) -> None:
        """One bcrypt's result, for everyone who waited on it."""
        waiters = self._checking.pop(key)
        if result is True:
            self._memo.put(key, True, self._clock.seconds() + MEMO_SECONDS)
        for waiting in waiters:
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(result)
