"""
C{[fleet]}: absent, a single node; present, every key validated with one
line naming it, and neither the Redis password nor the secret ever shown.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ocicache import ConfigError
from ocicache._ops._config import parse_config

SECRET = "fleet-secret-0123456789"
ENV = {"FLEET_SECRET": SECRET, "REDIS_PASSWORD": "redis-pass-42", "SHORT": "tiny"}


def _fleet(**keys: object) -> dict[str, object]:
    table: dict[str, object] = {
        "redis": "redis://10.0.0.2:6380/3", "node": "edge-a", "internal_listen": "tcp:5001:interface=10.0.0.5",
        "peer_url": "http://10.0.0.5:5001", "secret_env": "FLEET_SECRET",
    }
    table.update(keys)
    return {"fleet": {key: value for key, value in table.items() if value is not None}}


def test_no_fleet_table_is_a_single_node() -> None:
    assert parse_config({}).fleet is None


def test_a_fleet_node() -> None:
    fleet = parse_config(_fleet(redis_password_env="REDIS_PASSWORD", lock_ttl="20s"), ENV).fleet
    assert fleet is not None
    assert (fleet.redis_host, fleet.redis_port, fleet.redis_db) == ("10.0.0.2", 6380, 3)
    assert (fleet.node, fleet.internal_listen, str(fleet.peer_url)) == (
        "edge-a", "tcp:5001:interface=10.0.0.5", "http://10.0.0.5:5001")
    assert (fleet.secret, fleet.redis_password, fleet.lock_ttl) == (SECRET, "redis-pass-42", 20.0)
    assert SECRET not in repr(fleet) and "redis-pass-42" not in repr(fleet)


def test_defaults_port_db_node_and_ttl(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    fleet = parse_config(_fleet(redis="redis://redis", node=None, secret_env=None, secret_file=str(secret))).fleet
    assert fleet is not None
    assert (fleet.redis_port, fleet.redis_db, fleet.lock_ttl, fleet.secret) == (6379, 0, 10.0, SECRET)
    assert fleet.node  # the host name


@pytest.mark.parametrize(("keys", "message"), [
    ({"redis": None}, "fleet.redis: required"),
    ({"redis": "http://redis:6379"}, "fleet.redis: 'http://redis:6379' must be redis://host[:port][/db]"),
    ({"redis": "redis://:hunter2@redis"}, "fleet.redis: must not contain credentials"),
    ({"redis": "redis://redis/zero"}, "fleet.redis: 'redis://redis/zero': the path must be a database number"),
    ({"node": "a b"}, "fleet.node: 'a b' must be letters, digits"),
    ({"internal_listen": None}, "fleet.internal_listen: required"),
    ({"peer_url": None}, "fleet.peer_url: required"),
    ({"peer_url": "ftp://x"}, "fleet.peer_url: 'ftp://x' must be an http:// or https:// URL"),
    ({"secret_env": None}, "fleet.secret_file: required (or secret_env)"),
    ({"secret": "literal"}, "fleet.secret: a literal secret is not accepted"),
    ({"secret_env": "SHORT"}, "fleet.secret_file: the secret must be at least 16 characters"),
    ({"secret_env": "NOPE"}, "fleet.secret_env: environment variable 'NOPE' is not set"),
    ({"secret_file": "/nonexistent/secret"}, "fleet.secret_file: set secret_file or secret_env, not both"),
    ({"redis_password_file": "/nonexistent/pw"}, "fleet.redis_password_file: cannot read '/nonexistent/pw'"),
    ({"lock_ttl": "0.5s"}, "fleet.lock_ttl: must be at least 1s"),
    ({"lock_tll": "5s"}, "fleet: unknown key(s): lock_tll"),
])
def test_bad_fleet_keys_are_refused(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(_fleet(**keys), ENV)
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value) and SECRET not in str(raised.value)
