"""
Tests for the twistd plugin (C{src/twisted/plugins/ocicache_plugin.py}) and
L{ocicache._daemon._tap}: lazy loading, and the real C{twistd ocicache} command.

The daemon runs as C{sys.executable -c "from twisted.scripts.twistd import
run; run()" ...} with the source tree first on C{PYTHONPATH}, so that it is
this interpreter and this work tree, whatever C{twistd} is on C{PATH}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.python import usage

from ocicache._daemon import _tap

REPO = str(Path(__file__).resolve().parent.parent / "src")
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
DEADLINE = 30.0
"""Seconds after which a daemon that has not done what it should is a failure."""


def environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else REPO
    env["HOME"] = str(home)
    env.pop("CACHE_DIRECTORY", None)
    env.pop("XDG_CACHE_HOME", None)
    return env


def python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run C{code} in a fresh interpreter, outside the repository."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=str(tmp_path), env=environment(tmp_path),
        capture_output=True, text=True, timeout=DEADLINE,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "ocicache", *args],
        cwd=str(tmp_path), env=environment(tmp_path),
        capture_output=True, text=True, timeout=DEADLINE,
    )


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ocicache.toml"
    path.write_text(text)
    return str(path)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("ocicache: ")
    for fragment in fragments:
        assert fragment in line
    return line


# -- lazy loading


def test_plugin_and_tap_do_not_import_the_reactor(tmp_path: Path) -> None:
    result = python(
        f"import sys; sys.path.insert(0, {REPO!r})\n"
        "import twisted.plugins.ocicache_plugin, ocicache._daemon._tap\n"
        # The work tree's plugin, or after `pip install .` the installed
        # copy of it, which twisted.plugins lists first.
        "assert twisted.plugins.ocicache_plugin.__file__.endswith('twisted/plugins/ocicache_plugin.py')\n"
        "print(sorted(m for m in sys.modules if m == 'twisted.internet.reactor'))\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_get_plugins_finds_ocicache_without_importing_the_reactor(tmp_path: Path) -> None:
    result = python(
        f"import sys, json; sys.path.insert(0, {REPO!r})\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "found = [p for p in getPlugins(IServiceMaker) if p.tapname == 'ocicache']\n"
        "options = found[0].options() if found else None\n"
        "print(json.dumps({\n"
        "  'count': len(found),\n"
        "  'module': found[0].module if found else None,\n"
        "  'options': type(options).__module__ + '.' + type(options).__name__ if found else None,\n"
        "  'reactor': 'twisted.internet.reactor' in sys.modules,\n"
        "}))\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {
        "count": 1,
        "module": "ocicache._daemon._tap",
        "options": "ocicache._daemon._tap.Options",
        "reactor": False,
    }


# -- options, in process


def parsed(argv: list[str]) -> _tap.Options:
    """The daemon's options after C{argv}, as twistd parses them."""
    options = _tap.Options()
    # Looked up on twisted's class, whose untyped methods
    # untyped_calls_exclude covers; through _tap.Options it would not be.
    usage.Options.parseOptions(options, argv)
    return options


def test_options_listen_is_repeatable_and_config_is_optional() -> None:
    options = parsed(["--listen", "tcp:1:interface=127.0.0.1", "-l", "unix:/tmp/x.sock"])
    assert options["listen"] == ["tcp:1:interface=127.0.0.1", "unix:/tmp/x.sock"]
    assert options["config"] is None
    options = parsed(["-c", "/etc/ocicache/ocicache.toml"])
    assert options["config"] == "/etc/ocicache/ocicache.toml"
    assert options["listen"] == []


def test_listen_replaces_the_configured_listeners() -> None:
    from ocicache._ops._config import parse_config

    config = parse_config({"server": {"listen": ["tcp:1", "tcp:2"], "drain_timeout": "5s"}}, {})
    replaced = _tap._with_listen(config, ("tcp:3",))
    assert replaced.server.listen == ("tcp:3",)
    assert replaced.server.drain_timeout == 5.0
    assert replaced.upstreams == config.upstreams
    assert config.server.listen == ("tcp:1", "tcp:2")


def test_make_service_with_a_bad_config_exits_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, "[cache]\nmax_size = \"lots\"\n")
    options = parsed(["--config", path])
    with pytest.raises(SystemExit) as raised:
        _tap.makeService(options)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"ocicache: {path}: cache.max_size: ")


# -- the real twistd


def test_twistd_with_a_bad_config_prints_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[[upstream]]\nname = "x.io"\nurl = "ftp://x"\n')
    result = twistd(tmp_path, "--config", path)
    line = assert_one_line_error(result, "upstream[0].url")
    assert line == (
        f"ocicache: {path}: upstream[0].url: 'ftp://x' must be an http:// or https:// URL with a host"
    )


@pytest.mark.parametrize("text, key", [
    ("[server\n", "not valid TOML"),
    ("[cache]\nmax_szie = \"1GiB\"\n", "cache: unknown key(s): max_szie"),
    ('[[upstream]]\nname = "x.io"\nurl = "https://x.io"\nusername = "u"\npassword = "hunter2"\n',
     "upstream[0].password"),
])
def test_twistd_bad_configs(tmp_path: Path, text: str, key: str) -> None:
    path = write_config(tmp_path, text)
    result = twistd(tmp_path, "--config", path)
    line = assert_one_line_error(result, key)
    assert "hunter2" not in line


def test_twistd_missing_config_file(tmp_path: Path) -> None:
    result = twistd(tmp_path, "--config", str(tmp_path / "missing.toml"))
    assert_one_line_error(result, "missing.toml", "cannot read")


@pytest.mark.parametrize("endpoint", ["bogus:xyz", "tcp:notaport", "tcp:"])
def test_twistd_invalid_listen_prints_one_line(tmp_path: Path, endpoint: str) -> None:
    path = write_config(tmp_path, f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    result = twistd(tmp_path, "--config", path, "--listen", endpoint)
    assert_one_line_error(result, repr(endpoint), "listen")


def _connectable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_listen_overrides_config_and_sigterm_exits_cleanly(tmp_path: Path) -> None:
    port, configured_port = free_port(), free_port()
    path = write_config(tmp_path, f"""
[server]
listen = ["tcp:{configured_port}:interface=127.0.0.1"]
drain_timeout = "1s"

[cache]
dir = "{tmp_path / 'cache'}"
""")
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "ocicache", "--config", path,
         "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=str(tmp_path), env=environment(tmp_path), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not _connectable(port):
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, "the daemon never listened"
            time.sleep(0.05)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
            assert response.headers["Content-Type"] == "application/json"
            assert response.read() == b"{}"
        # A registry error is JSON too, not an HTML page.
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/ALPINE/manifests/latest", timeout=10)
        assert raised.value.code == 400
        assert json.loads(raised.value.read())["errors"][0]["code"] == "NAME_INVALID"
        # --listen replaced the configured listener rather than adding one.
        assert not _connectable(configured_port)

        proc.send_signal(signal.SIGTERM)
        # twistd re-raises the SIGTERM it handled once the reactor stops;
        # the log below shows the shutdown completed.
        assert proc.wait(timeout=DEADLINE) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in output
    assert "Received SIGTERM, shutting down." in output
    assert "Main loop terminated." in output
    assert output.rstrip().endswith("Server Shut Down.")
    # Nothing is left listening.
    assert not _connectable(port)
