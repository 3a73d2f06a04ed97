"""
The shipped client configurations, used by the real clients: skopeo (the
containers/image library of podman, buildah and CRI-O) with
C{etc/containers/registries.conf}, and containerd with
C{etc/containerd/certs.d}, including its fall-back to the next host when
the mirror is down.  Only the mirror's address is rewritten (to the test
daemon), and the real registries' addresses to a dead loopback port, so
nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable

import pytest

from ocitest import REPO_ROOT, free_port
from ocitest.containerd import Containerd
from ocitest.daemon import Daemon
from ocitest.hop import Hop
from ocitest.registry import Registry

pytestmark = pytest.mark.integration

ETC = os.path.join(REPO_ROOT, "etc")
DEAD = "127.0.0.1:1"
REAL_REGISTRIES = ("registry-1.docker.io", "ghcr.io", "quay.io", "registry.k8s.io")


def _rewritten(source: str, target: str, replacements: dict[str, str]) -> str:
    with open(source) as f:
        text = f.read()
    for old, new in replacements.items():
        text = text.replace(old, new)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as f:
        f.write(text)
    return target


def test_skopeo_with_the_shipped_registries_conf(
    daemon: Daemon, upstream: Registry, hop: Hop, skopeo: str, tmp_path: os.PathLike[str]
) -> None:
    replacements = {"127.0.0.1:5000": daemon.host}
    for registry in REAL_REGISTRIES:
        replacements[f'location = "{registry}"'] = f'location = "{DEAD}"'
    conf = _rewritten(os.path.join(ETC, "containers", "registries.conf"),
                      os.path.join(str(tmp_path), "registries.conf"), replacements)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    for reference, image in (("docker.io/library/ocitest-oci:v1", upstream.images["oci"]),
                             ("ghcr.io/team/app:v1", upstream.images["team"])):
        result = subprocess.run([skopeo, "--registries-conf", conf, "inspect", "--raw", f"docker://{reference}"],
                                capture_output=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == image.manifest_bytes
        result = subprocess.run([skopeo, "--registries-conf", conf, "inspect", "--config",
                                 f"docker://{reference}"], capture_output=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr.decode()
        assert image.config is not None
        assert json.loads(result.stdout) == json.loads(image.config.data)
    # Through the mirror's path prefixes, to the right upstream.
    log = daemon.log_text()
    assert "/v2/docker.io/library/ocitest-oci/manifests/v1" in log
    assert "/v2/ghcr.io/team/app/manifests/v1" in log


def test_containerd_with_the_shipped_hosts_toml(
    daemon: Daemon, upstream: Registry, containerd_factory: Callable[[], Containerd],
    tmp_path: os.PathLike[str],
) -> None:
    hosts = os.path.join(str(tmp_path), "certs.d")
    shutil.copytree(os.path.join(ETC, "containerd", "certs.d"), hosts)
    for name in os.listdir(hosts):
        _rewritten(os.path.join(hosts, name, "hosts.toml"), os.path.join(hosts, name, "hosts.toml"), {
            "http://127.0.0.1:5000": daemon.url,
            "https://registry-1.docker.io": f"http://{DEAD}",
            "https://ghcr.io": f"http://{DEAD}",
        })
    ctrd = containerd_factory()
    image = upstream.images["oci"]
    ctrd.pull("docker.io/library/ocitest-oci:v1", hosts_dir=hosts, unpack=False)
    content = ctrd.content_digests()
    assert image.manifest_digest in content
    assert all(blob.digest in content for blob in image.blobs)
    assert "/v2/library/ocitest-oci/manifests/v1?ns=docker.io" in daemon.log_text()

    team = upstream.images["team"]
    ctrd.pull("ghcr.io/team/app:v1", hosts_dir=hosts, unpack=False)
    assert team.manifest_digest in ctrd.content_digests()
    assert daemon.log_text().count("/v2/team/app/manifests/v1?ns=ghcr.io 200") == 1

    # Without a directory of its own, a registry goes through _default.
    shutil.rmtree(os.path.join(hosts, "ghcr.io"))
    ctrd.pull("ghcr.io/team/app:v1", hosts_dir=hosts, unpack=False)
    assert daemon.log_text().count("/v2/team/app/manifests/v1?ns=ghcr.io 200") == 2

    # A registry ocicache has no upstream for: 404, and containerd falls
    # back to the registry itself (plain HTTP here, hence --plain-http).
    result = ctrd.pull(f"{upstream.host}/team/app:v1", hosts_dir=hosts, unpack=False, plain_http=True)
    assert "trying next host - response was http.StatusNotFound" in result.stderr
    ns = upstream.host.replace(":", "%3A")
    assert f"/v2/team/app/manifests/v1?ns={ns} 404" in daemon.log_text()


def test_containerd_falls_back_when_the_mirror_is_down(
    daemon: Daemon, upstream: Registry, containerd_factory: Callable[[], Containerd],
    tmp_path: os.PathLike[str],
) -> None:
    """
    The mirror [host] refuses connections: containerd goes on to `server`
    (here ocicache again, standing in for the registry itself).
    """
    hosts = os.path.join(str(tmp_path), "certs.d")
    _rewritten(os.path.join(ETC, "containerd", "certs.d", "docker.io", "hosts.toml"),
               os.path.join(hosts, "docker.io", "hosts.toml"), {
                   "http://127.0.0.1:5000": f"http://127.0.0.1:{free_port()}",
                   "https://registry-1.docker.io": daemon.url,
               })
    ctrd = containerd_factory()
    image = upstream.images["oci"]
    ctrd.pull("docker.io/library/ocitest-oci:v1", hosts_dir=hosts, unpack=False)
    assert image.manifest_digest in ctrd.content_digests()
    # (containerd sends ?ns= to any host not named like the registry.)
    assert "/v2/library/ocitest-oci/manifests/v1?ns=docker.io 200" in daemon.log_text()


def test_docker_daemon_json_names_the_mirror() -> None:
    # No docker daemon here: check the file is what dockerd reads.
    with open(os.path.join(ETC, "docker", "daemon.json")) as f:
        config = json.load(f)
    assert config["registry-mirrors"] == ["http://127.0.0.1:5000"]
