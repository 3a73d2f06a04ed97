"""
The schema of C{[fleet]}: this node's place among ocicache nodes sharing
one Redis.
"""

from __future__ import annotations

import re
import socket

import attrs
from attrs import frozen
from hyperlink import DecodedURL

from ._fields import key
from ._names import HttpURL, RedisAddress, RedisURL
from ._secrets import Files
from ._types import Duration, Invalid, Refused, Text
from ._values import FleetConfig

__all__ = ["FleetTable"]

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MIN_SECRET = 16


@frozen
class FleetTable:
    """
    A fleet: several ocicache nodes behind one load balancer, sharing one
    Redis, still one upstream fetch per digest. Absent: a single node.
    Each node keeps its own cache.dir.
    """

    redis: RedisAddress = key(RedisURL(), "redis://host[:port][/db]", required="e.g. 'redis://10.0.0.2:6379/0'",
                              example="redis://10.0.0.2:6379/0")
    redis_password_file: str | None = key(Text(), "A file whose first line is Redis's password.",
                                          example="/etc/ocicache/redis.password")
    redis_password_env: str | None = key(Text(), "An environment variable holding Redis's password.",
                                         example="OCICACHE_REDIS_PASSWORD")
    redis_password: None = key(Refused("a literal secret is not accepted; use redis_password_file or"
                                       " redis_password_env"), "")
    node: str | None = key(Text(lambda text: not text or _NODE_NAME.fullmatch(text),
                                "{value} must be letters, digits, '.', '_' or '-' (at most 63)"),
                           "This node's name in the fleet, unique per node.", example="edge-a",
                           shown="the host name")
    internal_listen: str = key(Text(bool, "required"),
                               "The internal, authenticated endpoint the other nodes stream blobs from.",
                               required="an endpoint such as 'tcp:5001:interface=10.0.0.5'",
                               example="tcp:5001:interface=10.0.0.5")
    peer_url: DecodedURL = key(HttpURL("secret_file or secret_env", bare=True),
                               "How the other nodes reach internal_listen.",
                               required="how the other nodes reach internal_listen, e.g. 'http://10.0.0.5:5001'",
                               example="http://10.0.0.5:5001")
    secret_file: str | None = key(Text(), "A file whose first line is the secret every node shares (16+ characters).",
                                  example="/etc/ocicache/fleet.secret")
    secret_env: str | None = key(Text(), "An environment variable holding that secret.",
                                 example="OCICACHE_FLEET_SECRET")
    secret: None = key(Refused("a literal secret is not accepted; use secret_file or secret_env"), "")
    lock_ttl: float = key(Duration(minimum=1, refusal="must be at least 1s"),
                          "How long a node's fill lock outlives it; renewed while it downloads.",
                          default=attrs.fields(FleetConfig).lock_ttl.default)

    def check(self) -> None:
        for name in ("redis_password", "secret"):
            if getattr(self, f"{name}_file") is not None and getattr(self, f"{name}_env") is not None:
                raise Invalid(f"set {name}_file or {name}_env, not both", (f"{name}_file",))
        if (self.secret_file, self.secret_env) == (None, None):
            raise Invalid("required (or secret_env)", ("secret_file",))

    def build(self, files: Files, where: str) -> FleetConfig:
        secret = files.secret("secret", self.secret_file, self.secret_env) or ""
        if len(secret) < _MIN_SECRET:
            raise Invalid(f"the secret must be at least {_MIN_SECRET} characters", ("secret_file",))
        node = self.node or socket.gethostname().split(".")[0]
        if not _NODE_NAME.fullmatch(node):
            raise Invalid(f"{node!r} (the host name) must be letters, digits, '.', '_' or '-' (at most 63)", ("node",))
        return FleetConfig(
            redis_host=self.redis.host, redis_port=self.redis.port, redis_db=self.redis.db,
            node=node, internal_listen=self.internal_listen,
            peer_url=self.peer_url, secret=secret,
            redis_password=files.secret("redis_password", self.redis_password_file, self.redis_password_env),
            lock_ttl=self.lock_ttl)
