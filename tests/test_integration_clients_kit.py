"""
C{ocicache clients} (issue 22, part 2), run as operators run it, under a
C{--root}: what it prints, what it writes (atomically, with backups, a
second run changing nothing, docker's other keys kept), and real clients
pulling through the mirror with exactly the files it wrote: ctr with its
C{hosts.toml} files (and C{_default} falling back to a registry the
mirror has no upstream for), and podman with its C{registries.conf}
drop-in.  The upstreams are loopback registries, so the files' fallbacks
are too, and nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ocitest import free_port, require_binary
from ocitest.containerd import Containerd
from ocitest.daemon import Daemon, config_text, daemon_env
from ocitest.dockerd import Dockerd
from ocitest.gitserver import GitServer, git
from ocitest.packages import Apt, DebRepository, Dnf, Nginx, RpmRepository
from ocitest.registry import Registry

pytestmark = pytest.mark.integration


def _clients(daemon: Daemon, root: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocicache", "clients", "--config", daemon.config_path, "--mirror", daemon.url,
         "--root", root, *extra],
        capture_output=True, text=True, timeout=60, env=daemon_env())


def _tree(root: str) -> dict[str, bytes]:
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def test_prints_then_applies_once_keeping_backups_and_other_keys(daemon: Daemon, tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(str(tmp_path), "host")
    os.makedirs(os.path.join(root, "etc", "docker"))
    daemon_json = os.path.join(root, "etc", "docker", "daemon.json")
    before = {"log-driver": "journald", "registry-mirrors": ["https://other.example"]}
    with open(daemon_json, "w") as f:
        json.dump(before, f)

    shown = _clients(daemon, root)
    assert shown.returncode == 0, shown.stderr
    assert f"would write: {root}/etc/containerd/certs.d/docker.io/hosts.toml" in shown.stdout
    assert f'    [host."{daemon.url}"]' in shown.stdout
    assert "5 file(s) to write: run again with --apply" in shown.stdout
    assert _tree(root) == {"etc/docker/daemon.json": json.dumps(before).encode()}

    applied = _clients(daemon, root, "--apply")
    assert applied.returncode == 0, applied.stderr
    files = _tree(root)
    assert sorted(files) == [
        "etc/containerd/certs.d/_default/hosts.toml",
        "etc/containerd/certs.d/docker.io/hosts.toml",
        "etc/containerd/certs.d/ghcr.io/hosts.toml",
        "etc/containers/registries.conf.d/ocicache.conf",
        "etc/docker/daemon.json",
        "etc/docker/daemon.json.ocicache-backup",
    ]
    assert files["etc/docker/daemon.json.ocicache-backup"] == json.dumps(before).encode()
    assert json.loads(files["etc/docker/daemon.json"]) == {
        "log-driver": "journald", "registry-mirrors": [daemon.url, "https://other.example"]}
    # Every file the dry run showed is what was written.
    for path, content in files.items():
        if not path.endswith(".ocicache-backup"):
            assert "".join(f"    {line}\n" for line in content.decode().splitlines()) in shown.stdout, path

    again = _clients(daemon, root, "--apply")
    assert again.returncode == 0, again.stderr
    assert "wrote:" not in again.stdout and again.stdout.count("unchanged: ") == 5
    assert _tree(root) == files


def test_a_daemon_json_that_is_not_json_is_left_alone(daemon: Daemon, tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(str(tmp_path), "host")
    os.makedirs(os.path.join(root, "etc", "docker"))
    with open(os.path.join(root, "etc", "docker", "daemon.json"), "w") as f:
        f.write("{not json")
    result = _clients(daemon, root, "--apply")
    assert result.returncode == 2
    assert result.stderr.startswith(f"ocicache: {root}/etc/docker/daemon.json is not JSON")
    assert "Traceback" not in result.stderr
    assert _tree(root) == {"etc/docker/daemon.json": b"{not json"}


@pytest.mark.parametrize("mirror", ["ftp://x", "http://u:p@x:5000", "http://x:5000/path", "http://x:99999"])
def test_a_bad_mirror_is_one_line(daemon: Daemon, tmp_path: os.PathLike[str], mirror: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocicache", "clients", "--config", daemon.config_path, "--mirror", mirror,
         "--root", str(tmp_path)], capture_output=True, text=True, timeout=60, env=daemon_env())
    assert result.returncode == 2 and result.stderr.startswith("ocicache: --mirror "), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "p@" not in result.stderr


def test_ctr_pulls_through_the_mirror_with_the_generated_hosts_toml(
    daemon: Daemon, upstream: Registry, containerd_factory: Callable[[], Containerd], tmp_path: os.PathLike[str],
) -> None:
    root = os.path.join(str(tmp_path), "host")
    assert _clients(daemon, root, "--apply").returncode == 0
    hosts = os.path.join(root, "etc", "containerd", "certs.d")
    ctrd = containerd_factory()
    image = upstream.images["oci"]
    ctrd.pull("docker.io/library/ocitest-oci:v1", hosts_dir=hosts, unpack=False)
    content = ctrd.content_digests()
    assert image.manifest_digest in content and all(blob.digest in content for blob in image.blobs)
    assert "/v2/library/ocitest-oci/manifests/v1?ns=docker.io 200" in daemon.log_text()
    team = upstream.images["team"]
    ctrd.pull("ghcr.io/team/app:v1", hosts_dir=hosts, unpack=False)
    assert team.manifest_digest in ctrd.content_digests()
    assert "/v2/team/app/manifests/v1?ns=ghcr.io 200" in daemon.log_text()

    # A registry the mirror has no upstream for: _default asks the mirror,
    # which answers 404, and containerd falls back to the registry itself.
    ctrd2 = containerd_factory()
    result = ctrd2.pull(f"{upstream.host}/team/app:v1", hosts_dir=hosts, unpack=False, plain_http=True)
    assert "trying next host - response was http.StatusNotFound" in result.stderr
    assert team.manifest_digest in ctrd2.content_digests()
    ns = upstream.host.replace(":", "%3A")
    assert f"/v2/team/app/manifests/v1?ns={ns} 404" in daemon.log_text()


def test_podman_pulls_through_the_mirror_with_the_generated_drop_in(
    daemon: Daemon, upstream: Registry, tmp_path: os.PathLike[str],
) -> None:
    root = os.path.join(str(tmp_path), "host")
    assert _clients(daemon, root, "--apply").returncode == 0
    podman = require_binary("podman")
    state = os.path.join(str(tmp_path), "podman")
    env = {**os.environ, "HOME": state, "XDG_RUNTIME_DIR": state, "XDG_CONFIG_HOME": state,
           "CONTAINERS_REGISTRIES_CONF": os.path.join(root, "etc", "containers", "registries.conf.d",
                                                      "ocicache.conf")}
    os.makedirs(state, exist_ok=True)
    # podman refuses a runroot path longer than 50 characters.
    runroot = tempfile.mkdtemp(prefix="ocp-", dir="/tmp")
    base = [podman, "--root", os.path.join(state, "root"), "--runroot", runroot,
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    try:
        _podman_pulls(base, env, upstream)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
    log = daemon.log_text()
    assert "/v2/docker.io/library/ocitest-oci/manifests/v1 200" in log
    assert "/v2/ghcr.io/team/app/manifests/v1 200" in log


def _podman_pulls(base: list[str], env: dict[str, str], upstream: Registry) -> None:
    for reference, image in (("docker.io/library/ocitest-oci:v1", upstream.images["oci"]),
                             ("ghcr.io/team/app:v1", upstream.images["team"])):
        result = subprocess.run([*base, "pull", "--quiet", reference], capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        result = subprocess.run([*base, "image", "inspect", "--format", "{{.Digest}}", reference],
                                capture_output=True, text=True, timeout=60, env=env)
        assert result.stdout.strip() == image.manifest_digest, (result.stdout, result.stderr)


def test_dockerd_pulls_through_the_mirror_with_the_generated_daemon_json(
    daemon: Daemon, upstream: Registry, tmp_path: os.PathLike[str],
) -> None:
    """dockerd reads exactly the daemon.json written (its existing keys kept) and pulls Docker Hub through it."""
    root = os.path.join(str(tmp_path), "host")
    os.makedirs(os.path.join(root, "etc", "docker"))
    daemon_json = os.path.join(root, "etc", "docker", "daemon.json")
    with open(daemon_json, "w") as f:
        json.dump({"max-concurrent-downloads": 2}, f)
    assert _clients(daemon, root, "--apply").returncode == 0
    image = upstream.images["oci"]
    with Dockerd(daemon_json) as dockerd:
        info = dockerd.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}")
        assert json.loads(info.stdout) == [daemon.url + "/"], info
        result = dockerd.docker("pull", "docker.io/library/ocitest-oci:v1")
        assert result.returncode == 0, (result.stderr, dockerd.log_text()[-3000:])
        result = dockerd.docker("image", "inspect", "--format", "{{json .RepoDigests}}", "ocitest-oci:v1")
        assert json.loads(result.stdout) == [f"ocitest-oci@{image.manifest_digest}"], result
    log = daemon.log_text()
    assert "/v2/library/ocitest-oci/manifests/v1 200" in log
    assert all(f"/v2/library/ocitest-oci/blobs/{blob.digest} 200" in log for blob in image.blobs)


def test_git_clones_through_the_mirror_with_the_generated_gitconfig(tmp_path: os.PathLike[str]) -> None:
    """
    With a [[git]] host, /etc/gitconfig gets insteadOf rules (its other
    settings kept): git, reading exactly that file as its system config,
    clones the host's URL through the mirror.
    """
    server = GitServer(os.path.join(str(tmp_path), "gitserver")).start()
    try:
        server.create("public/app.git")
        port = free_port()
        text = config_text(port=port, cache_dir=os.path.join(str(tmp_path), "cache"), upstreams=[])
        text += f'\n[[git]]\nname = "git.test"\nurl = "{server.url}"\n'
        path = os.path.join(str(tmp_path), "ocicache.toml")
        with open(path, "w") as f:
            f.write(text)
        with Daemon(path, port=port, workdir=os.path.join(str(tmp_path), "daemon")) as daemon:
            root = os.path.join(str(tmp_path), "host")
            os.makedirs(os.path.join(root, "etc"))
            gitconfig = os.path.join(root, "etc", "gitconfig")
            with open(gitconfig, "w") as f:
                f.write("[core]\n\tautocrlf = false\n")
            assert _clients(daemon, root, "--apply").returncode == 0
            with open(gitconfig) as f:
                assert f.read().startswith("[core]\n\tautocrlf = false\n# >>> ocicache clients")
            env = {"GIT_CONFIG_NOSYSTEM": "0", "GIT_CONFIG_SYSTEM": gitconfig}
            into = os.path.join(str(tmp_path), "clone")
            git("clone", f"{server.url}/public/app.git", into, cwd=str(tmp_path), env=env)
            assert git("rev-parse", "HEAD", cwd=into).stdout.strip() == \
                git("rev-parse", "main", cwd=os.path.join(server.root, "public/app.git")).stdout.strip()
            assert "/git/git.test/public/app.git/info/refs" in daemon.log_text()
            # A second run changes nothing.
            again = _clients(daemon, root, "--apply")
            assert "wrote:" not in again.stdout, again.stdout
    finally:
        server.stop()


def test_apt_and_dnf_fetch_through_the_mirror_with_the_rewritten_sources(tmp_path: os.PathLike[str]) -> None:
    """
    With [[files]] remotes of kind deb and rpm, the host's apt sources and
    dnf .repo files that name them are rewritten (other lines kept, the
    repository's metalink commented out); apt-get and dnf, reading exactly
    those files, fetch through the mirror.
    """
    tmp = Path(str(tmp_path))
    repo = DebRepository(tmp / "repo")
    repo.add("hello", "1.0")
    repo.publish()
    rpm = RpmRepository(tmp / "repo" / "rpm")
    rpm.add("hello", "1.0")
    rpm.publish()
    nginx = Nginx(repo.root, tmp / "nginx").start()
    try:
        port = free_port()
        text = config_text(port=port, cache_dir=str(tmp / "cache"), upstreams=[])
        text += (f'\n[[files]]\nname = "debian"\nurl = "{nginx.url}"\nkind = "deb"\n'
                 f'[[files]]\nname = "rpms"\nurl = "{nginx.url}/rpm"\nkind = "rpm"\n')
        (tmp / "ocicache.toml").write_text(text)
        with Daemon(str(tmp / "ocicache.toml"), port=port, workdir=str(tmp / "daemon")) as daemon:
            root = tmp / "host"
            (root / "etc" / "apt").mkdir(parents=True)
            (root / "etc" / "yum.repos.d").mkdir(parents=True)
            (root / "etc" / "apt" / "sources.list").write_text(
                f"# the host's own\ndeb [trusted=yes] {nginx.url} stable main\n")
            (root / "etc" / "yum.repos.d" / "local.repo").write_text(
                f"[local]\nname=local\nbaseurl={nginx.url}/rpm/\nmetalink=http://127.0.0.1:9/metalink\n"
                "gpgcheck=0\nenabled=1\nmetadata_expire=0\n")
            assert _clients(daemon, str(root), "--apply").returncode == 0
            sources = (root / "etc" / "apt" / "sources.list").read_text()
            assert sources == f"# the host's own\ndeb [trusted=yes] {daemon.url}/files/debian stable main\n"
            repo_file = (root / "etc" / "yum.repos.d" / "local.repo").read_text()
            assert f"baseurl={daemon.url}/files/rpms/\n#metalink=" in repo_file

            apt = Apt(tmp / "apt", "unused")
            (apt.workdir / "sources.list").write_text(sources)  # the file, as rewritten
            apt.run("update")
            apt.run("install", "--download-only", "-y", "hello")
            assert any(name.startswith("hello_1.0") for name in os.listdir(apt.archives))
            dnf = Dnf(tmp / "dnf", "unused")
            (dnf.workdir / "repos" / "ocicache.repo").unlink()
            (dnf.workdir / "repos" / "local.repo").write_text(repo_file)
            dnf.run("install", "hello")
            assert any(name.startswith("hello-1.0") for name in os.listdir(dnf.dest))
            log = daemon.log_text()
            assert "/files/debian/dists/stable/" in log and "/files/debian/pool/" in log
            assert "/files/rpms/repodata/repomd.xml" in log and "/files/rpms/Packages/hello-1.0" in log
            assert "wrote:" not in _clients(daemon, str(root), "--apply").stdout
    finally:
        nginx.stop()
