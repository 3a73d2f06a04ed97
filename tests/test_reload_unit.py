"""
The reload (L{ocicache._daemon._reload}): what is swapped, what waits for
a restart, and a bad file that changes nothing; with real files, the real
reactor and a real thread pool.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

from ocicache._daemon._reload import Reloader, restart_only_changes
from ocicache._identity import ANONYMOUS
from ocicache._oci._services import Services
from ocicache._ops._config import Credentials, load_config
from ocicache._ops._reactor import the_reactor
from ocicache._policy import Policy, ReferenceKind, decide
from ocicache._upstream._client import Upstream, make_pool
from ocicache._upstream._credentials import CredentialHelper
from ocicache._upstream._tokens import TokenCache


def write(path: str, password_file: str, extra: str = "", listen: int = 5000) -> None:
    with open(path, "w") as f:
        f.write(f"""
[server]
listen = ["tcp:{listen}:interface=127.0.0.1"]
[cache]
dir = "/tmp/ocicache-reload-test"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
username = "bot"
password_file = "{password_file}"
{extra}
""")


class _Holder:
    policy: Policy


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(0, 1, name="reload-test")
    threads.start()
    yield threads
    threads.stop()


@pytest.fixture
def files(tmp_path: Any) -> tuple[str, str]:
    config, password = os.path.join(str(tmp_path), "ocicache.toml"), os.path.join(str(tmp_path), "password")
    with open(password, "w") as f:
        f.write("old-password\n")
    write(config, password)
    return config, password


def _reloader(config_path: str, pool: ThreadPool) -> tuple[Reloader, _Holder, Upstream]:
    running = load_config(config_path, {})
    holder = _Holder()
    holder.policy = Policy.from_config(running)
    upstream = Upstream(running.upstreams[0], reactor, make_pool(reactor), TokenCache(reactor))
    reloader = Reloader(config_path, running, cast(Services, holder), {"docker.io": upstream}, the_reactor(), pool)
    return reloader, holder, upstream


@pytest_twisted.ensureDeferred
async def test_a_reload_swaps_policy_and_credentials(files: tuple[str, str], pool: ThreadPool) -> None:
    config_path, password_file = files
    reloader, holder, upstream = _reloader(config_path, pool)
    assert await upstream.credentials.get() == Credentials("bot", "old-password")
    with open(password_file, "w") as f:
        f.write("new-password\n")
    write(config_path, password_file, 'exclude = ["alpine"]\n')
    await reloader.reload()
    assert reloader.reloads == 1
    assert await upstream.credentials.get() == Credentials("bot", "new-password")
    decision = decide(holder.policy, ANONYMOUS, "docker.io", "library/alpine", ReferenceKind.BLOB)
    assert decision.rule == "upstream[docker.io].exclude"


@pytest_twisted.ensureDeferred
async def test_a_bad_file_changes_nothing(files: tuple[str, str], pool: ThreadPool) -> None:
    config_path, password_file = files
    reloader, holder, upstream = _reloader(config_path, pool)
    policy, credentials = holder.policy, upstream.credentials
    os.remove(password_file)
    await reloader.reload()
    assert reloader.reloads == 0
    assert holder.policy is policy and upstream.credentials is credentials


@pytest_twisted.ensureDeferred
async def test_a_helper_replaces_a_password(files: tuple[str, str], pool: ThreadPool) -> None:
    config_path, _ = files
    reloader, _, upstream = _reloader(config_path, pool)
    with open(config_path) as f:
        text = f.read()
    with open(config_path, "w") as f:
        f.write("\n".join(line for line in text.splitlines() if not line.startswith(("username", "password_file")))
                + '\ncredential_helper = "test"\n')
    await reloader.reload()
    assert isinstance(upstream.credentials, CredentialHelper)


def test_what_needs_a_restart(files: tuple[str, str], tmp_path: Any) -> None:
    config_path, password_file = files
    running = load_config(config_path, {})
    other = os.path.join(str(tmp_path), "other.toml")
    write(other, password_file, 'exclude = ["x"]\ntags = ["v*"]\nmax_downloads = 3\n', listen=5001)
    with open(other, "a") as f:
        f.write('[[upstream]]\nname = "ghcr.io"\nurl = "https://ghcr.io"\n[[rule]]\nidentity = "**"\n')
    assert restart_only_changes(running, load_config(other, {})) == [
        "server.listen", "upstream[docker.io].max_downloads", "upstream[ghcr.io] (added)"]
    assert restart_only_changes(running, running) == []
    with open(other, "a") as f:
        f.write('[[warm]]\nrefs = ["docker.io/library/alpine:3"]\n')
    assert "warm" in restart_only_changes(running, load_config(other, {}))
