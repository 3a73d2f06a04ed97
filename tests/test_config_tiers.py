"""
The tier keys of an C{[[upstream]]}: C{kind}, C{ns}, C{token_file} and C{token_env}.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ocicache import ConfigError
from ocicache._ops._config import parse_config


def _upstream(**keys: object) -> dict[str, object]:
    return {"upstream": [{"name": "docker.io", "url": "http://regional:5000", **keys}]}


def test_a_registry_sends_no_ns() -> None:
    upstream = parse_config(_upstream()).upstreams[0]
    assert upstream.kind == "registry" and upstream.mirror_ns is None


def test_a_mirror_sends_its_name_or_ns() -> None:
    assert parse_config(_upstream(kind="mirror")).upstreams[0].mirror_ns == "docker.io"
    assert parse_config(_upstream(kind="mirror", ns="Quay.IO")).upstreams[0].mirror_ns == "quay.io"


@pytest.mark.parametrize(("keys", "message"), [
    ({"kind": "proxy"}, "upstream[0].kind: 'proxy' must be 'registry' or 'mirror'"),
    ({"ns": "quay.io"}, "upstream[0].ns: only a kind = 'mirror' upstream takes ns"),
    ({"kind": "mirror", "ns": "../x"}, "upstream[0].ns: '../x' is not a registry host name"),
    ({"token_env": "NOPE"}, "upstream[0].token_env: environment variable 'NOPE' is not set"),
    ({"token_env": "TOKEN", "token_file": "/x"}, "upstream[0].token_file: set token_file or token_env, not both"),
    ({"token_env": "BAD"}, "upstream[0].token: the token must be one line"),
    ({"token_env": "TOKEN", "username": "u", "password_env": "TOKEN"}, "or credentials, not both"),
])
def test_bad_tier_keys_are_refused(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(_upstream(**keys), environ={"TOKEN": "s3cret-token", "BAD": "a b\r\nX-Evil: 1"})
    assert message in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_a_token_comes_from_a_file_and_never_shows(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("edge-7f3a9c\n")
    upstream = parse_config(_upstream(kind="mirror", token_file=str(token_file))).upstreams[0]
    assert upstream.token == "edge-7f3a9c"
    assert "edge-7f3a9c" not in repr(upstream)
    assert parse_config(_upstream(token_env="T"), environ={"T": "abc"}).upstreams[0].token == "abc"
