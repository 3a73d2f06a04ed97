"""
C{ocicache warm} and C{[[warm]]}, against the real daemon with the real
distribution behind the counting hop: exactly the requested platform's
closure is fetched, with a progress bar on a terminal and plain lines
otherwise; then a pull works with the upstream stopped.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest

from ocitest import free_port, http_request, wait_for
from ocitest.daemon import Daemon, DaemonPool, config_text, daemon_env, default_upstreams
from ocitest.hop import Hop
from ocitest.images import Image, host_arch
from ocitest.ops import metric_value, scrape

pytestmark = pytest.mark.integration

INDEX_REF = "docker.io/library/ocitest-index:v1"


def blob_path(cache_dir: str, digest: str) -> str:
    algorithm, hex_ = digest.split(":", 1)
    return os.path.join(cache_dir, "blobs", algorithm, hex_[:2], hex_)


def ocicache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocicache", *args], capture_output=True, text=True,
                          env=daemon_env(), timeout=300)


def on_a_terminal(*args: str) -> tuple[int, str]:
    """Run C{ocicache ARGS} with a pseudo-terminal for its output; its exit status and what it drew."""
    leader, follower = pty.openpty()
    env = daemon_env()
    env["TERM"] = "xterm-256color"
    env["COLUMNS"] = "160"
    proc = subprocess.Popen([sys.executable, "-m", "ocicache", *args], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env=env)
    os.close(follower)
    drawn = bytearray()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not data:
                break
            drawn += data
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(30), drawn.decode("utf-8", "replace")


def other_arch(image: Image) -> str:
    """The index's platform that is not this host's, to show the filter is the one asked for."""
    arches = [child.platform["architecture"] for child in image.children if child.platform]
    return next(arch for arch in arches if arch != host_arch())


def platform_of(image: Image) -> str:
    """How the index describes C{image}'s platform: C{os/arch[/variant]}."""
    assert image.platform is not None
    return "/".join(image.platform[key] for key in ("os", "architecture", "variant") if key in image.platform)


def blob_gets(hop: Hop) -> list[str]:
    return sorted(r.target.split("/blobs/")[1].split("?")[0] for r in hop.matching("GET", "/blobs/"))


def test_warm_fetches_exactly_one_platforms_closure_then_a_pull_needs_no_upstream(
    ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop, skopeo: str, tmp_path: os.PathLike[str]
) -> None:
    index = ocitest_images["index"]
    arch = other_arch(index)
    child = index.for_platform(arch)
    first = ocicache("warm", "--config", daemon.config_path, INDEX_REF, "--platform", f"linux/{arch}")
    assert first.returncode == 0, first.stderr
    hop.wait_idle()
    # The index and the one platform's manifest; its config and layers, once each; nothing of the other.
    assert hop.count("GET", "/manifests/") == 2, hop.summary()
    assert hop.count("GET", f"/manifests/{child.manifest_digest}") == 1
    assert blob_gets(hop) == sorted(blob.digest for blob in child.blobs), hop.summary()
    for blob in child.blobs:
        assert os.path.getsize(blob_path(daemon.cache_dir, blob.digest)) == blob.size
    # Not a terminal: plain lines, one per blob, and the summary with the digest the tag resolved to.
    assert "\x1b[" not in first.stdout + first.stderr
    assert f"warm: {len(child.blobs)}/{len(child.blobs)} " in first.stderr
    assert f"{INDEX_REF} -> {index.manifest_digest} ({platform_of(child)} {child.manifest_digest})" in first.stdout
    assert f"fetched {len(child.blobs)} blobs" in first.stdout
    assert "all warm" in first.stdout

    second = ocicache("warm", "--config", daemon.config_path, INDEX_REF, "--platform", f"linux/{arch}", "--json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    [image] = summary["images"]
    assert summary["ok"] is True
    assert image["digest"] == index.manifest_digest
    assert image["manifests"][1] == {"digest": child.manifest_digest, "platform": platform_of(child), "cache": "hit"}
    assert image["cached"] == {"blobs": len(child.blobs), "bytes": sum(b.size for b in child.blobs)}
    assert image["fetched"] == {"blobs": 0, "bytes": 0}
    hop.wait_idle()
    assert len(blob_gets(hop)) == len(child.blobs), "the second warm fetched blobs again"

    hop.stop()
    dest = os.path.join(str(tmp_path), "pulled")
    pulled = subprocess.run(
        [skopeo, "--insecure-policy", "--override-os", "linux", "--override-arch", arch, "copy",
         "--src-tls-verify=false", f"docker://{daemon.host}/{INDEX_REF}", f"dir:{dest}"],
        capture_output=True, text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    for blob in child.blobs:
        assert os.path.getsize(os.path.join(dest, blob.hex)) == blob.size


def test_warm_draws_a_progress_bar_on_a_terminal(ocitest_images: dict[str, Image], daemon: Daemon,
                                                 hop: Hop) -> None:
    image = ocitest_images["oci"]
    status, drawn = on_a_terminal("warm", "--config", daemon.config_path, "docker.io/library/ocitest-oci:v1")
    assert status == 0, drawn
    assert "\x1b[" in drawn, drawn  # drawn in place, not written as lines
    assert f"{len(image.blobs)}/{len(image.blobs)} blobs" in drawn, drawn
    assert "ETA" in drawn and "/s" in drawn, drawn  # the rate and the time left
    assert "MiB" in drawn or "KiB" in drawn, drawn
    assert "warm: 1/" not in drawn  # not the plain lines
    hop.wait_idle()
    assert blob_gets(hop) == sorted(blob.digest for blob in image.blobs)


def test_warm_exit_status_names_what_failed(ocitest_images: dict[str, Image], daemon: Daemon, hop: Hop) -> None:
    good = "docker.io/library/ocitest-oci:v1"
    missing = "docker.io/library/ocitest-oci:no-such-tag"
    mixed = ocicache("warm", "--config", daemon.config_path, good, missing)
    assert mixed.returncode == 1
    assert f"FAILED {missing}: 404 MANIFEST_UNKNOWN" in mixed.stderr, mixed.stderr
    assert f"FAILED {good}" not in mixed.stderr
    as_json = json.loads(ocicache("warm", "--config", daemon.config_path, "--json", missing).stdout)
    assert as_json["ok"] is False and as_json["images"][0]["failed"][0]["ref"] == missing

    hop.reset()
    dry = ocicache("warm", "--config", daemon.config_path, "--dry-run", "docker.io/library/ocitest-team:v9", good)
    assert dry.returncode == 1  # the first is unknown
    assert "would fetch" in dry.stdout
    hop.wait_idle()
    assert hop.count("GET", "/blobs/") == 0, "a dry run fetched blobs"

    for usage in (["NOT/A/REF"], [good, "--platform", "linux"], []):
        result = ocicache("warm", "--config", daemon.config_path, *usage)
        assert result.returncode == 2, (usage, result.stdout, result.stderr)
    assert "not an image reference" in ocicache("warm", "--config", daemon.config_path, "UPPER").stderr

    nobody = ocicache("warm", "--url", f"http://127.0.0.1:{free_port()}", good)
    assert nobody.returncode == 1
    assert "cannot reach the daemon" in nobody.stderr


def _write_warm_config(pool: DaemonPool, tables: Sequence[str], hop: Hop, **extra: object) -> Daemon:
    workdir = os.path.join(pool.base_dir, f"warm{len(pool.daemons)}")
    os.makedirs(workdir, exist_ok=True)
    port = free_port()
    cache_dir = os.path.join(workdir, "cache")
    text = config_text(port=port, cache_dir=cache_dir, upstreams=default_upstreams(hop.url), **extra)  # type: ignore[arg-type]
    path = os.path.join(workdir, "ocicache.toml")
    with open(path, "w") as f:
        f.write(text + "\n" + "\n".join(tables) + "\n")
    daemon = Daemon(path, port=port, workdir=workdir, cache_dir=cache_dir)
    pool.daemons.append(daemon)
    return daemon.start()


def test_warm_table_warms_at_start_logged_and_counted(
    ocitest_images: dict[str, Image], daemon_factory: DaemonPool, hop: Hop
) -> None:
    index = ocitest_images["index"]
    arch = other_arch(index)
    child = index.for_platform(arch)
    oci = ocitest_images["oci"]
    metrics = free_port()
    daemon = _write_warm_config(daemon_factory, [
        "[[warm]]",
        f'refs = ["{INDEX_REF}", "ocitest-oci:v1"]',
        f'platforms = ["linux/{arch}"]',
        'every = "1h"',
        "[[warm]]",
        'refs = ["ocitest-list:v1"]',
        "pin = true",
    ], hop, extra_tables={"metrics": {"listen": f"tcp:{metrics}:interface=127.0.0.1"}})
    listed = ocitest_images["list"]
    pinned = listed.for_platform(host_arch())
    wanted = [b.digest for b in child.blobs] + [b.digest for b in oci.blobs] + [b.digest for b in pinned.blobs]
    wait_for(lambda: all(os.path.exists(blob_path(daemon.cache_dir, d)) for d in wanted), 30,
             what="the [[warm]] closure in the store")
    wait_for(lambda: metric_value(scrape(f"http://127.0.0.1:{metrics}/metrics"), "ocicache_warm_runs_total") == 3,
             30, what="the three warm runs counted")
    hop.wait_idle()
    assert blob_gets(hop) == sorted(wanted), hop.summary()
    # The index and its one platform, the single-platform image, the list and this host's platform.
    assert hop.count("GET", "/manifests/") == 5
    text = scrape(f"http://127.0.0.1:{metrics}/metrics")
    assert metric_value(text, "ocicache_warm_runs_total", result="ok") == 3
    assert metric_value(text, "ocicache_warm_blobs_total", outcome="fetched") == len(wanted)
    assert metric_value(text, "ocicache_warm_blobs_total", outcome="failed") == 0
    log = daemon.log_text()
    assert f"Warmed {INDEX_REF} ({index.manifest_digest}): fetched {len(child.blobs)} blobs" in log, log
    assert f"Warmed ocitest-oci:v1 ({oci.manifest_digest}): fetched {len(oci.blobs)} blobs" in log, log
    assert f"Pinned ocitest-list:v1 ({listed.manifest_digest}): fetched {len(pinned.blobs)} blobs" in log, log
    wait_for(lambda: metric_value(scrape(f"http://127.0.0.1:{metrics}/metrics"), "ocicache_pinned_bytes")
             == sum(b.size for b in pinned.blobs), 10, what="the pinned bytes counted")
    pins = json.loads(ocicache("pins", "--config", daemon.config_path, "--json").stdout)["pins"]
    assert [(p["repo"], p["reference"], p["digest"]) for p in pins] == [
        ("library/ocitest-list", "v1", listed.manifest_digest)]
    # Warmed through the cache: a client now gets hits.
    status, headers, _ = http_request(f"{daemon.url}/v2/library/ocitest-oci/blobs/{oci.blobs[-1].digest}")
    assert status == 200 and headers["ocicache-cache"] == "hit"
