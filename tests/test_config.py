"""
Tests for L{ocicache._ops._config}: the TOML file, its defaults, and one-line
errors that name the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from ocicache._ops._config import (
    Config,
    ConfigError,
    default_cache_dir,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No cache directory variables leak in from the caller's environment."""
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    return home


def error(data: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, environ or {})
    message = str(raised.value)
    assert "\n" not in message
    return message


def upstream(**keys: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"name": "registry.example", "url": "https://registry.example"}
    table.update(keys)
    return table


# -- defaults


def test_no_file_gives_the_embedded_default(clean_environ: Path) -> None:
    config = load_config(None, {})
    assert config.server.listen == ("tcp:5000:interface=127.0.0.1",)
    assert config.server.drain_timeout == 30.0
    assert config.server.log_format == "text"
    assert config.server.header_timeout == 10.0
    assert config.server.idle_timeout == 60.0
    assert config.server.stall_timeout == 60.0
    assert config.server.max_connections is None  # derived from RLIMIT_NOFILE at start-up
    assert config.server.max_header_bytes == 16 << 10
    assert config.server.max_headers == 100
    assert config.server.max_request_line == 8 << 10
    assert [u.name for u in config.upstreams] == [
        "docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io",
        "public.ecr.aws", "mcr.microsoft.com",
    ]
    assert [u.name for u in config.upstreams if u.default] == ["docker.io"]
    assert config.default_upstream is not None
    assert config.default_upstream.name == "docker.io"
    assert config.default_upstream.is_docker_hub
    assert str(config.default_upstream.url) == "https://registry-1.docker.io"
    assert all(u.credentials is None for u in config.upstreams)
    assert all(u.tls_verify for u in config.upstreams)
    assert config.cache.dir == str(clean_environ / ".cache" / "ocicache")
    assert config.cache.tag_ttl == 300.0
    assert config.cache.max_size is None
    assert config.cache.min_free is None
    assert config.cache.blob_ttl is None
    assert config.cache.janitor_interval == 60.0
    assert config.metrics.listen is None


def test_empty_file_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert load_config(str(path), {}) == load_config(None, {})


def test_cache_dir_honours_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "ocicache")
    assert load_config(None, {}).cache.dir == str(tmp_path / "xdg" / "ocicache")


def test_cache_directory_from_systemd_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/ocicache:/var/cache/other")
    assert default_cache_dir() == "/var/cache/ocicache"
    assert load_config(None, {}).cache.dir == "/var/cache/ocicache"


def test_empty_xdg_cache_home_is_ignored(monkeypatch: pytest.MonkeyPatch, clean_environ: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert default_cache_dir() == str(clean_environ / ".cache" / "ocicache")


def test_explicit_cache_dir_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/ocicache")
    assert parse_config({"cache": {"dir": "/srv/cache"}}, {}).cache.dir == "/srv/cache"


def test_full_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "ocicache.toml"
    path.write_text(f"""
[server]
listen = ["tcp:5001:interface=127.0.0.1", "tcp6:5001:interface=\\\\:\\\\:1"]
drain_timeout = "1m"
log_format = "json"

[cache]
dir = "{tmp_path}/cache"
tag_ttl = "10m"
max_size = "50GiB"
min_free = "5%"
blob_ttl = "30d"
janitor_interval = "90s"

[metrics]
listen = "tcp:9402:interface=127.0.0.1"

[[upstream]]
name = "Docker.IO"
url = "https://registry-1.docker.io/"
default = true
username = "bot"
password_file = "{secret}"
tag_ttl = "1h"

[[upstream]]
name = "registry.internal:5000"
url = "https://registry.internal:5000/mirror/"
ca_file = "{ca}"
tls_verify = false
""")
    config = load_config(str(path), {})
    assert config.server.listen == ("tcp:5001:interface=127.0.0.1", "tcp6:5001:interface=\\:\\:1")
    assert config.server.drain_timeout == 60.0
    assert config.server.log_format == "json"
    assert config.cache.dir == f"{tmp_path}/cache"
    assert config.cache.tag_ttl == 600.0
    assert config.cache.max_size == 50 << 30
    assert config.cache.min_free == pytest.approx(0.05)
    assert config.cache.blob_ttl == 30 * 86400.0
    assert config.cache.janitor_interval == 90.0
    assert config.metrics.listen == "tcp:9402:interface=127.0.0.1"
    hub, internal = config.upstreams
    assert hub.name == "docker.io" and hub.default and hub.is_docker_hub
    assert hub.credentials is not None
    assert hub.credentials.username == "bot"
    assert hub.credentials.password == "hunter2"
    assert config.tag_ttl_for(hub) == 3600.0
    assert internal.name == "registry.internal:5000" and not internal.default
    assert not internal.is_docker_hub
    assert str(internal.url) == "https://registry.internal:5000/mirror"
    assert internal.ca_file == str(ca)
    assert internal.tls_verify is False
    assert config.tag_ttl_for(internal) == 600.0
    assert config.upstream_named("docker.io") is hub
    assert config.upstream_named("registry.internal:5000") is internal
    assert config.upstream_named("ghcr.io") is None
    assert config.default_upstream is hub


def test_the_example_file_loads() -> None:
    config = load_config(str(REPO / "etc" / "ocicache.toml"), {})
    assert [u.name for u in config.upstreams] == ["docker.io", "ghcr.io", "registry.internal:5000"]
    assert config.default_upstream is not None and config.default_upstream.name == "docker.io"
    assert config.cache.max_size == 50 << 30


def test_server_limits() -> None:
    server = parse_config({"server": {
        "header_timeout": "2s", "idle_timeout": "5m", "stall_timeout": 30, "max_connections": 500,
        "max_header_bytes": "32KiB", "max_headers": 50, "max_request_line": 4096,
    }}, {}).server
    assert (server.header_timeout, server.idle_timeout, server.stall_timeout) == (2.0, 300.0, 30.0)
    assert server.max_connections == 500
    assert (server.max_header_bytes, server.max_headers, server.max_request_line) == (32 << 10, 50, 4096)


def test_workers_a_count_or_auto() -> None:
    assert parse_config({}, {}).server.workers == 1
    assert parse_config({"server": {"workers": 1}}, {}).server.workers == 1
    assert parse_config({"server": {"workers": 16}}, {}).server.workers == 16
    assert parse_config({"server": {"workers": "auto"}}, {}).server.workers == "auto"


def test_auto_is_one_worker_per_core_this_process_may_use() -> None:
    from ocicache._daemon._main_process import worker_count

    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3


@pytest.mark.parametrize(("value", "message"), [
    (0, r'^server\.workers: must be between 1 and 256, or "auto"$'),
    (257, r'^server\.workers: must be between 1 and 256, or "auto"$'),
    ("two", r"""^server\.workers: 'two' is not a whole number or "auto"$"""),
    ("AUTO", r"""^server\.workers: 'AUTO' is not a whole number"""),
    (True, r"^server\.workers: 'True' is not a whole number"),
    (1.0, r"^server\.workers: '1\.0' is not a whole number"),
])
def test_workers_outside_the_grammar_are_refused_at_load(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"server": {"workers": value}}, {})


def test_connections_per_address() -> None:
    assert parse_config({}, {}).server.max_connections_per_address is None  # a quarter of max_connections
    server = parse_config({"server": {"max_connections_per_address": 0}}, {}).server
    assert server.max_connections_per_address == 0
    with pytest.raises(ConfigError, match=r"server\.max_connections_per_address: must be 0 \(no limit\) or more"):
        parse_config({"server": {"max_connections_per_address": -1}}, {})


def test_download_bounds_and_scrub() -> None:
    config = parse_config({
        "cache": {"max_downloads": 8, "download_queue": 0, "abandon_after": "30s", "abandon_below": 1,
                  "scrub_rate": "1MiB"},
        "server": {"sendfile": False},
        "upstream": [upstream(max_downloads=2)],
    }, {})
    cache = config.cache
    assert (cache.max_downloads, cache.download_queue, cache.abandon_after) == (8, 0, 30.0)
    assert (cache.abandon_below, cache.scrub_rate) == (1.0, 1 << 20)
    assert config.server.sendfile is False
    assert config.upstreams[0].max_downloads == 2


def test_upstream_timeouts() -> None:
    config = parse_config({"upstream": [upstream(connect_timeout="3s", response_timeout="2m")]}, {})
    assert (config.upstreams[0].connect_timeout, config.upstreams[0].response_timeout) == (3.0, 120.0)
    assert all((u.connect_timeout, u.response_timeout) == (10.0, 60.0) for u in parse_config({}, {}).upstreams)
    with pytest.raises(ConfigError, match=r"response_timeout: must be positive"):
        parse_config({"upstream": [upstream(response_timeout=0)]}, {})


@pytest.mark.parametrize("value, floor", [(10, 10), ("10%", 0.1), (" 0% ", 0.0), (0, 0)])
def test_quota_floor(value: object, floor: int | float) -> None:
    config = parse_config({"upstream": [upstream(quota_floor=value, quota_stretch="2h")]}, {})
    assert config.upstreams[0].quota_floor == floor and type(config.upstreams[0].quota_floor) is type(floor)
    assert config.upstreams[0].quota_stretch == 7200.0


def test_quota_defaults() -> None:
    assert all((u.quota_floor, u.quota_stretch) == (0.1, 21600.0) for u in parse_config({}, {}).upstreams)


@pytest.mark.parametrize("value, seconds", [("7d", 7 * 86400.0), ("never", None), (60, 60.0)])
def test_manifest_ttl(value: object, seconds: float | None) -> None:
    assert parse_config({"cache": {"manifest_ttl": value}}, {}).cache.manifest_ttl == seconds


def test_download_defaults() -> None:
    config = parse_config({}, {})
    assert (config.cache.max_downloads, config.cache.download_queue) == (32, 256)
    assert (config.cache.abandon_after, config.cache.abandon_below) == (10.0, 0.5)
    assert config.cache.scrub_rate == 16 << 20 and config.server.sendfile is True
    assert all(u.max_downloads == 16 for u in config.upstreams)


def test_the_example_file_documents_every_cache_key() -> None:
    text = (REPO / "etc" / "ocicache.toml").read_text()
    cache = text[text.index("[cache]"):text.index("[metrics]")]
    for key in attrs.fields_dict(type(parse_config({}, {}).cache)):
        assert re.search(rf"^(# )?{key} = ", cache, re.M), f"[cache] {key} is not in etc/ocicache.toml"


def test_the_example_file_documents_every_server_key() -> None:
    text = (REPO / "etc" / "ocicache.toml").read_text()
    server = text[text.index("[server]"):text.index("[cache]")]
    for key in attrs.fields_dict(type(parse_config({}, {}).server)):
        assert re.search(rf"^(# )?{key} = ", server, re.M), f"[server] {key} is not in etc/ocicache.toml"


def test_listed_upstreams_replace_the_defaults() -> None:
    config = parse_config({"upstream": [upstream()]}, {})
    assert [u.name for u in config.upstreams] == ["registry.example"]
    assert config.default_upstream is None


# -- errors name the key


@pytest.mark.parametrize("data, key", [
    ({"upstream": [upstream(url="ftp://registry.example")]}, "upstream[0].url: "),
    ({"upstream": [upstream(), upstream(name="b.example", url="registry")]}, "upstream[1].url: "),
    ({"upstream": [upstream(url="https://registry.example/?x=1")]}, "upstream[0].url: "),
    ({"upstream": [upstream(url="https://registry.example/#f")]}, "upstream[0].url: "),
    ({"upstream": [upstream(url=5)]}, "upstream[0].url: "),
    ({"upstream": [{"url": "https://registry.example"}]}, "upstream[0].name: "),
    ({"upstream": [{"name": "registry.example"}]}, "upstream[0].url: "),
    ({"upstream": [upstream(name="not a host")]}, "upstream[0].name: "),
    ({"upstream": [upstream(name="registry.example/path")]}, "upstream[0].name: "),
    ({"upstream": [upstream(name="registry.example\n")]}, "upstream[0].name: "),
    ({"upstream": [upstream(name="a" * 254 + ".io")]}, "upstream[0].name: "),
    ({"upstream": [upstream(default="yes")]}, "upstream[0].default: "),
    ({"upstream": [upstream(tls_verify=1)]}, "upstream[0].tls_verify: "),
    ({"upstream": [upstream(tag_ttl="soon")]}, "upstream[0].tag_ttl: "),
    ({"upstream": [upstream(ca_file="/nonexistent/ca.pem")]}, "upstream[0].ca_file: "),
    ({"upstream": [upstream(username="bot")]}, "upstream[0]: "),
    ({"upstream": [upstream(password_env="X")]}, "upstream[0]: "),
    ({"upstream": [upstream(username="bot", password_env="NOT_SET")]}, "upstream[0].password_env: "),
    ({"upstream": [upstream(username="bot", password_file="/nonexistent/pw")]}, "upstream[0].password_file: "),
    ({"upstream": [upstream(username="bot", password_file="/x", password_env="X")]}, "upstream[0]: "),
    ({"upstream": [5]}, "upstream[0]: "),
    ({"upstream": "docker.io"}, "upstream: "),
    ({"upstream": []}, "upstream: "),
    ({"server": {"listen": "tcp:5000"}}, "server.listen: "),
    ({"server": {"listen": []}}, "server.listen: "),
    ({"server": {"listen": [""]}}, "server.listen: "),
    ({"server": {"listen": [5000]}}, "server.listen: "),
    ({"server": {"drain_timeout": "-1s"}}, "server.drain_timeout: "),
    ({"server": {"drain_timeout": -1}}, "server.drain_timeout: "),
    ({"server": {"drain_timeout": float("nan")}}, "server.drain_timeout: "),
    ({"server": {"drain_timeout": float("inf")}}, "server.drain_timeout: "),
    ({"server": {"drain_timeout": 10 ** 400}}, "server.drain_timeout: "),
    ({"server": {"drain_timeout": "9" * 400 + "s"}}, "server.drain_timeout: "),
    ({"server": {"log_format": "xml"}}, "server.log_format: "),
    ({"server": {"header_timeout": 0}}, "server.header_timeout: "),
    ({"server": {"header_timeout": "soon"}}, "server.header_timeout: "),
    ({"server": {"idle_timeout": "0s"}}, "server.idle_timeout: "),
    ({"server": {"idle_timeout": -5}}, "server.idle_timeout: "),
    ({"server": {"stall_timeout": 0}}, "server.stall_timeout: "),
    ({"server": {"stall_timeout": True}}, "server.stall_timeout: "),
    ({"server": {"max_connections": 0}}, "server.max_connections: "),
    ({"server": {"max_connections": "100"}}, "server.max_connections: "),
    ({"server": {"max_connections": 1.5}}, "server.max_connections: "),
    ({"server": {"max_headers": 0}}, "server.max_headers: "),
    ({"server": {"max_headers": 10 ** 6}}, "server.max_headers: "),
    ({"server": {"max_headers": True}}, "server.max_headers: "),
    ({"server": {"max_header_bytes": "100B"}}, "server.max_header_bytes: "),
    ({"server": {"max_header_bytes": "2MiB"}}, "server.max_header_bytes: "),
    ({"server": {"max_header_bytes": "16KB"}}, "server.max_header_bytes: "),
    ({"server": {"max_request_line": 10}}, "server.max_request_line: "),
    ({"server": {"max_request_line": "9" * 400 + "TiB"}}, "server.max_request_line: "),
    ({"server": "tcp:5000"}, "server: "),
    ({"cache": {"dir": 5}}, "cache.dir: "),
    ({"cache": {"tag_ttl": "5 minutes"}}, "cache.tag_ttl: "),
    ({"cache": {"max_size": "50GB"}}, "cache.max_size: "),
    ({"cache": {"max_size": "1KiB"}}, "cache.max_size: "),
    ({"cache": {"max_size": -1}}, "cache.max_size: "),
    ({"cache": {"max_size": 1.5}}, "cache.max_size: "),
    ({"cache": {"max_size": "9" * 400 + "TiB"}}, "cache.max_size: "),
    ({"cache": {"min_free": "100%"}}, "cache.min_free: "),
    ({"cache": {"min_free": "lots%"}}, "cache.min_free: "),
    ({"cache": {"min_free": "nan%"}}, "cache.min_free: "),
    ({"cache": {"blob_ttl": True}}, "cache.blob_ttl: "),
    ({"cache": {"janitor_interval": 0}}, "cache.janitor_interval: "),
    ({"cache": {"max_downloads": 0}}, "cache.max_downloads: "),
    ({"cache": {"max_downloads": "8"}}, "cache.max_downloads: "),
    ({"cache": {"download_queue": -1}}, "cache.download_queue: "),
    ({"cache": {"abandon_after": 0}}, "cache.abandon_after: "),
    ({"cache": {"abandon_below": 1.5}}, "cache.abandon_below: "),
    ({"cache": {"abandon_below": "half"}}, "cache.abandon_below: "),
    ({"cache": {"scrub_rate": "fast"}}, "cache.scrub_rate: "),
    ({"server": {"sendfile": "yes"}}, "server.sendfile: "),
    ({"upstream": [upstream(max_downloads=0)]}, "upstream[0].max_downloads: "),
    ({"upstream": [upstream(quota_floor=-1)]}, "upstream[0].quota_floor: "),
    ({"upstream": [upstream(quota_floor="ten")]}, "upstream[0].quota_floor: "),
    ({"upstream": [upstream(quota_floor="150%")]}, "upstream[0].quota_floor: "),
    ({"upstream": [upstream(quota_floor=1.5)]}, "upstream[0].quota_floor: "),
    ({"upstream": [upstream(quota_floor=True)]}, "upstream[0].quota_floor: "),
    ({"upstream": [upstream(quota_stretch=0)]}, "upstream[0].quota_stretch: "),
    ({"upstream": [upstream(quota_stretch="later")]}, "upstream[0].quota_stretch: "),
    ({"cache": {"manifest_ttl": "soon"}}, "cache.manifest_ttl: "),
    ({"cache": {"manifest_ttl": 0}}, "cache.manifest_ttl: "),
    ({"metrics": {"listen": ["tcp:9402"]}}, "metrics.listen: "),
])
def test_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    assert error(data).startswith(key)


@pytest.mark.parametrize("data, message", [
    ({"bogus": 1}, "top level: unknown key(s): bogus"),
    ({"server": {"listen": ["tcp:1"], "lisen": 1}}, "server: unknown key(s): lisen"),
    ({"cache": {"max_szie": "1GiB"}}, "cache: unknown key(s): max_szie"),
    ({"metrics": {"port": 1}}, "metrics: unknown key(s): port"),
    ({"upstream": [upstream(mirror=True, zz=1)]}, "upstream[0]: unknown key(s): mirror, zz"),
])
def test_unknown_keys_are_rejected(data: dict[str, Any], message: str) -> None:
    assert error(data) == message


def test_load_config_prefixes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[upstream]]\nname = "x.io"\nurl = "ftp://x"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), {})
    assert str(raised.value) == (
        f"{path}: upstream[0].url: 'ftp://x' must be an http:// or https:// URL with a host"
    )


@pytest.mark.parametrize("text", [
    "[server\nlisten = []\n",
    "listen = \n",
    'a = "unterminated\n',
    "[cache]\n[cache]\n",
    'a = 1\na = 2\n',
])
def test_bad_toml_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), {})
    message = str(raised.value)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "\n" not in message


def test_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'a = "\xff"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), {})
    assert str(raised.value).startswith(f"{path}: not valid TOML: ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path / "missing.toml"), {})
    assert str(raised.value) == f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path), {})
    assert str(raised.value).startswith(f"{tmp_path}: cannot read: ")


def test_two_defaults_are_rejected() -> None:
    message = error({"upstream": [
        upstream(default=True), upstream(name="b.example", default=True),
    ]})
    assert message == "upstream: only one upstream may set default = true"


def test_duplicate_names_are_rejected_case_insensitively() -> None:
    message = error({"upstream": [
        upstream(name="docker.io"), upstream(name="ghcr.io"), upstream(name="Docker.IO"),
    ]})
    assert message == "upstream[2].name: 'docker.io' is configured twice"


# -- credentials


def test_literal_password_is_rejected() -> None:
    message = error({"upstream": [upstream(username="bot", password="hunter2")]})
    assert message.startswith("upstream[0].password: ")
    assert "hunter2" not in message


def test_credentials_in_the_url_are_rejected() -> None:
    message = error({"upstream": [upstream(url="https://bot:hunter2@registry.example")]})
    assert message.startswith("upstream[0].url: ")
    assert "hunter2" not in message


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-Pa55\nsecond line is not part of it\n")
    config = parse_config({"upstream": [upstream(username="bot", password_file=str(secret))]}, {})
    credentials = config.upstreams[0].credentials
    assert credentials is not None
    assert (credentials.username, credentials.password) == ("bot", "s3cr3t-Pa55")
    assert "s3cr3t-Pa55" not in repr(config)
    assert "s3cr3t-Pa55" not in str(config)
    assert "s3cr3t-Pa55" not in repr(credentials)


def test_password_file_with_crlf(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"s3cr3t\r\n")
    config = parse_config({"upstream": [upstream(username="bot", password_file=str(secret))]}, {})
    assert config.upstreams[0].credentials is not None
    assert config.upstreams[0].credentials.password == "s3cr3t"


def test_empty_password_file_is_rejected(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("\n")
    message = error({"upstream": [upstream(username="bot", password_file=str(secret))]})
    assert message.startswith("upstream[0].password_file: ")


def test_password_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xff\xfe\n")
    message = error({"upstream": [upstream(username="bot", password_file=str(secret))]})
    assert message.startswith("upstream[0].password_file: ")


def test_password_env() -> None:
    environ = {"OCICACHE_PW": "from-the-environment"}
    config = parse_config({"upstream": [upstream(username="bot", password_env="OCICACHE_PW")]}, environ)
    credentials = config.upstreams[0].credentials
    assert credentials is not None
    assert credentials.password == "from-the-environment"
    assert "from-the-environment" not in repr(config)


def test_password_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCICACHE_TEST_PW", "process-env-secret")
    config = parse_config({"upstream": [upstream(username="bot", password_env="OCICACHE_TEST_PW")]})
    assert config.upstreams[0].credentials is not None
    assert config.upstreams[0].credentials.password == "process-env-secret"


def test_password_never_in_errors_about_other_keys(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("very-secret\n")
    message = error({"upstream": [upstream(username="bot", password_file=str(secret), tag_ttl="x")]})
    assert message.startswith("upstream[0].tag_ttl: ")
    assert "very-secret" not in message


# -- durations and sizes


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30.0),
    ("0s", 0.0),
    ("5m", 300.0),
    ("2h", 7200.0),
    ("7d", 604800.0),
    ("1.5h", 5400.0),
    (" 10m ", 600.0),
    ("10 m", 600.0),
    (45, 45.0),
    (0.5, 0.5),
    (0, 0.0),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "5", "5x", "m", "", "-5m", "5M", "5 minutes", "1e3s", "5m5s", "5ms", True, False,
    None, [], -1, float("nan"), float("inf"), float("-inf"), "9" * 400 + "s",
])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("10", 10),
    ("10B", 10),
    ("1KiB", 1024),
    ("150MiB", 150 << 20),
    ("50GiB", 50 << 30),
    ("2TiB", 2 << 40),
    ("1.5KiB", 1536),
    (" 1 GiB ", 1 << 30),
    (0, 0),
    (1 << 40, 1 << 40),
])
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [
    "10KB", "10 MB", "10k", "GiB", "", "-1KiB", "1kib", "1PiB", "1e3", True, 1.5, -1, None,
])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_min_free_as_size_or_percentage() -> None:
    assert parse_config({"cache": {"min_free": "10GiB"}}, {}).cache.min_free == 10 << 30
    assert parse_config({"cache": {"min_free": "5%"}}, {}).cache.min_free == pytest.approx(0.05)
    assert parse_config({"cache": {"min_free": "0%"}}, {}).cache.min_free == 0.0


def test_config_is_frozen() -> None:
    config = parse_config({}, {})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.server = config.server  # type: ignore[misc]
    assert isinstance(config, Config)


def test_every_error_message_is_one_line_for_hostile_input() -> None:
    # Whatever a client of the file writes, the message stays one line.
    for hostile in ("a\nb", "\r\n", "x" * 10000 + "\n"):
        for data in (
            {"upstream": [upstream(name=hostile)]},
            {"upstream": [upstream(url=hostile)]},
            {"cache": {"tag_ttl": hostile}},
            {"cache": {"max_size": hostile}},
            {"server": {"log_format": hostile}},
        ):
            message = error(data)
            assert "\n" not in message and "\r" not in message, message[:200]
            assert re.match(r"^[a-z_\[\]0-9.]+: ", message)


def test_environ_is_only_read_for_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    # A password_env not in the environ given is missing, even when the
    # process has it.
    monkeypatch.setenv("OCICACHE_TEST_PW", "x")
    message = error({"upstream": [upstream(username="bot", password_env="OCICACHE_TEST_PW")]},
                    {"OTHER": "y"})
    assert message.startswith("upstream[0].password_env: ")
    assert os.environ["OCICACHE_TEST_PW"] == "x"


@pytest.mark.parametrize("value, seconds", [(None, 60.0), ("5m", 300.0), ("0s", 0.0), (30, 30.0)])
def test_referrers_ttl(value: object, seconds: float) -> None:
    data = {} if value is None else {"cache": {"referrers_ttl": value}}
    assert parse_config(data, {}).cache.referrers_ttl == seconds


@pytest.mark.parametrize("value", ["-1s", "soon", True, -5])
def test_a_bad_referrers_ttl_names_its_key(value: object) -> None:
    assert error({"cache": {"referrers_ttl": value}}).startswith("cache.referrers_ttl: ")
