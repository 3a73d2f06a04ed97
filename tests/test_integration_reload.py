"""
SIGHUP against the real daemon: a new policy applies to new requests
while a pull in flight completes with the right bytes; a bad file is one
log line and the running config stays; keys that need a restart are
named.  And upstream credentials from a real credential helper
(C{docker-credential-test} on the daemon's PATH) against a docker-registry
behind a token server: its secret rotates and the new one is used, never
an old token; a failing helper is one warning and a 502; the secret is
never in the log or /metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon, Upstream, write_config
from ocitest.hop import Hop
from ocitest.images import MEDIA, Image
from ocitest.ops import AuxRegistry, TokenServer, metric_value, scrape
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ACCEPT = {"Accept": ", ".join(MEDIA.MANIFEST_TYPES)}


def rewrite(daemon: Daemon, upstreams: list[Upstream], **config: Any) -> None:
    write_config(daemon.config_path, port=daemon.port, cache_dir=daemon.cache_dir, upstreams=upstreams, **config)


def sighup(daemon: Daemon, expect: str) -> list[str]:
    """SIGHUP the daemon; wait for a log line holding C{expect}; the lines it logged about it."""
    assert daemon.pid is not None
    before = len(daemon.log_text().splitlines())
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: expect in "\n".join(daemon.log_text().splitlines()[before:]), 15, what=expect)
    time.sleep(0.3)  # let any second line of the same reload land, so the tests can count them
    return [line for line in daemon.log_text().splitlines()[before:] if "Config reload" in line]


def status_of(daemon: Daemon, path: str, method: str = "GET") -> int:
    return http_request(daemon.url + path, method=method, headers=ACCEPT)[0]


def test_a_reload_applies_to_new_requests_while_a_pull_completes(
    daemon_factory: Callable[..., Daemon], hop: Hop, ocitest_images: dict[str, Image]
) -> None:
    daemon = daemon_factory()
    big, oci = ocitest_images["big1"], ocitest_images["oci"]
    layer = big.blobs[-1]
    assert status_of(daemon, f"/v2/{big.repo}/manifests/{big.tag}") == 200
    hop.throttle = 256 << 10
    with ThreadPoolExecutor(1) as pool:
        pulling = pool.submit(http_request, f"{daemon.url}/v2/{big.repo}/blobs/{layer.digest}", timeout=60)
        wait_for(lambda: hop.bytes_sent_for(layer.digest) > 0, 15, what="the layer download to start")
        rewrite(daemon, [Upstream("docker.io", hop.url, default=True, extra={"exclude": ["ocitest-big*"]}),
                         Upstream("ghcr.io", hop.url)], tag_ttl="7m")
        lines = sighup(daemon, "Config reloaded")
        assert not pulling.done(), "the pull ended before the reload: throttle it more"
        # New requests see the new policy at once, the download's own blob too.
        assert status_of(daemon, f"/v2/{big.repo}/manifests/{big.tag}") == 403
        assert status_of(daemon, f"/v2/{big.repo}/blobs/{layer.digest}", "HEAD") == 403
        assert status_of(daemon, f"/v2/{oci.repo}/manifests/{oci.tag}") == 200
        status, headers, body = pulling.result(timeout=60)
    assert status == 200
    assert len(body) == layer.size and "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
    assert hop.count("GET", f"/blobs/{layer.digest}") == 1, "the download was not restarted"
    assert len(lines) == 2, lines
    assert "cache.tag_ttl changed, which needs a restart" in lines[1]
    assert "Traceback" not in daemon.log_text()


def test_a_bad_config_is_refused_and_the_old_one_stays(
    daemon_factory: Callable[..., Daemon], hop: Hop, ocitest_images: dict[str, Image]
) -> None:
    metrics_port = free_port()
    daemon = daemon_factory(upstreams=[Upstream("docker.io", hop.url, default=True, extra={"exclude": ["team/*"]})],
                            extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
    oci, team = ocitest_images["oci"], ocitest_images["team"]
    assert status_of(daemon, f"/v2/{team.repo}/manifests/{team.tag}") == 403
    assert status_of(daemon, f"/v2/{oci.repo}/manifests/{oci.tag}") == 200
    with open(daemon.config_path, "a") as f:
        f.write("\n[server\n")
    lines = sighup(daemon, "Config reload refused")
    assert len(lines) == 1 and "not valid TOML" in lines[0], lines
    # Valid TOML, but no valid config: named by its key; a policy that
    # would allow team/ (and exclude the rest) is not half applied.
    rewrite(daemon, [Upstream("docker.io", hop.url, default=True,
                              extra={"include": ["team/*"], "tags": ["v*"], "digest_only": True})])
    lines = sighup(daemon, "Config reload refused")
    assert len(lines) == 1 and "upstream[0].tags: digest_only refuses every tag" in lines[0], lines
    assert status_of(daemon, f"/v2/{team.repo}/manifests/{team.tag}") == 403
    assert status_of(daemon, f"/v2/{oci.repo}/manifests/{oci.tag}") == 200
    # A good one then applies.
    rewrite(daemon, [Upstream("docker.io", hop.url, default=True, extra={"include": ["team/*"]})])
    sighup(daemon, "Config reloaded")
    assert status_of(daemon, f"/v2/{team.repo}/manifests/{team.tag}") == 200
    assert status_of(daemon, f"/v2/{oci.repo}/manifests/{oci.tag}") == 403
    metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    assert metric_value(metrics, "ocicache_config_reloads_total", result="refused") == 2
    assert metric_value(metrics, "ocicache_config_reloads_total", result="applied") == 1
    assert "Traceback" not in daemon.log_text()


# -- a credential helper against a registry behind a token server


USERNAME = "ocibot"

HELPER = """#!/bin/sh
read url
echo "$url" >> {dir}/helper-runs
[ -f {dir}/secret ] || exit 1
printf '{{"ServerURL": "%s", "Username": "{username}", "Secret": "%s"}}' "$url" "$(cat {dir}/secret)"
"""


def test_a_credential_helper_whose_secret_rotates(
    tmp_path: os.PathLike[str], upstream: Registry, ocitest_images: dict[str, Image]
) -> None:
    work = str(tmp_path)
    first, second = "first-" + secrets.token_hex(12), "second-" + secrets.token_hex(12)
    bin_dir = os.path.join(work, "bin")
    os.makedirs(bin_dir)
    helper = os.path.join(bin_dir, "docker-credential-test")
    with open(helper, "w") as f:
        f.write(HELPER.format(dir=work, username=USERNAME))
    os.chmod(helper, os.stat(helper).st_mode | stat.S_IXUSR)
    with open(os.path.join(work, "secret"), "w") as f:
        f.write(first)
    tokens = TokenServer(os.path.join(work, "tokens"), USERNAME, first).start()
    registry = AuxRegistry(os.path.join(work, "registry"), upstream.storage, auth_yaml=tokens.registry_auth_yaml())
    metrics_port, port = free_port(), free_port()
    oci, team = ocitest_images["oci"], ocitest_images["team"]
    with registry:
        config = write_config(
            os.path.join(work, "daemon", "ocicache.toml"), port=port, cache_dir=os.path.join(work, "cache"),
            upstreams=[Upstream("docker.io", registry.url, default=True,
                                extra={"credential_helper": "test", "credential_ttl": "1s"})],
            extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}},
        )
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        daemon = Daemon(config, port=port, workdir=os.path.join(work, "daemon"), env=env).start()
        try:
            status, _, body = http_request(f"{daemon.url}/v2/{oci.repo}/manifests/{oci.tag}", headers=ACCEPT)
            assert status == 200 and body == oci.manifest_bytes
            with open(os.path.join(work, "helper-runs")) as f:
                assert f.read().splitlines()[0] == registry.url
            assert tokens.requests and all(r["authorized"] for r in tokens.requests)
            seen = len(tokens.requests)

            # Rotate: the helper and the token server now know only the second secret.
            with open(os.path.join(work, "secret"), "w") as f:
                f.write(second)
            tokens.password = second
            time.sleep(1.2)  # past credential_ttl
            # The same repository (the same token scope): the token the
            # first secret got must not be used for the second.
            status, _, body = http_request(f"{daemon.url}/v2/{oci.repo}/tags/list")
            assert status == 200 and json.loads(body)["tags"] == [oci.tag]
            after = tokens.requests[seen:]
            assert after, "no token was asked for with the rotated secret"
            assert all(r["authorized"] for r in after), "a token request used the old secret"

            # The helper fails (its secret is gone): one warning, then 502s.
            os.remove(os.path.join(work, "secret"))
            time.sleep(1.2)
            for _ in range(3):
                status, _, body = http_request(f"{daemon.url}/v2/{team.repo}/manifests/{team.tag}", headers=ACCEPT)
                assert status == 502 and json.loads(body)["errors"][0]["code"] == "UPSTREAM_UNAVAILABLE"

            # SIGHUP to a password file holding the second secret: used at
            # once, though the helper's failure was still being waited out.
            password_file = os.path.join(work, "password")
            with open(password_file, "w") as f:
                f.write(second + "\n")
            write_config(config, port=port, cache_dir=os.path.join(work, "cache"),
                         upstreams=[Upstream("docker.io", registry.url, default=True,
                                             extra={"username": USERNAME, "password_file": password_file})],
                         extra_tables={"metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}})
            sighup(daemon, "Config reloaded")
            status, _, body = http_request(f"{daemon.url}/v2/{team.repo}/manifests/{team.tag}", headers=ACCEPT)
            assert status == 200 and body == team.manifest_bytes
            metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            assert metric_value(metrics, "ocicache_upstream_requests_total", kind="token", code="200") >= 2
        finally:
            daemon.stop()
            tokens.stop()
    log = daemon.log_text()
    warnings = [line for line in log.splitlines() if "credential program" in line]
    assert len(warnings) == 1 and "exited with status 1" in warnings[0], warnings
    for secret in (first, second, *tokens.issued):
        assert secret not in log, "a secret is in the daemon log"
        assert secret not in metrics, "a secret is in /metrics"
    assert "Traceback" not in log
