"""
C{[admin]}: the admin API on the operator listener (C{[metrics] listen}):
who may use it from beyond the loopback interface, and how long the pull
log is kept.
"""

from __future__ import annotations

import re

from attrs import field, frozen

from ._fields import key
from ._secrets import Files
from ._types import Integer, Invalid, Text

__all__ = ["AdminConfig", "AdminTable"]

_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{16,}=*")
"""RFC 6750 §2.1's token characters, and at least 16 of them."""


@frozen
class AdminConfig:
    token: str | None = field(default=None, repr=False)
    """The bearer token a client beyond the loopback interface must send; C{None}: loopback only."""
    pull_log_days: int = 30


_DAYS = 30


@frozen
class AdminTable:
    """
    The admin API (/admin/... on the [metrics] listener): the loopback
    interface may always use it; any other client must send
    "Authorization: Bearer <token>", and without a token it may not.
    """

    token_file: str | None = key(Text(), "A file whose first line is the admin API's bearer token.",
                                 example="/etc/ocicache/admin.token")
    token_env: str | None = key(Text(), "An environment variable holding that token.",
                                example="OCICACHE_ADMIN_TOKEN")
    pull_log_days: int = key(Integer(1, 3650, "must be 1 to 3650 days"),
                             "Days the pull log (who pulled what, when) is kept.",
                             default=_DAYS)

    def check(self) -> None:
        if self.token_file is not None and self.token_env is not None:
            raise Invalid("set token_file or token_env, not both", ("token_file",))

    def build(self, files: Files, where: str) -> AdminConfig:
        token = files.secret("token", self.token_file, self.token_env)
        if token is not None and not _TOKEN.fullmatch(token):
            raise Invalid("the token must be one line of at least 16 RFC 6750 token characters", ("token",))
        return AdminConfig(token, self.pull_log_days)
