"""
Real package repositories on loopback: a Debian repository made by
C{dpkg-deb} and C{apt-ftparchive}, served by a real nginx, and C{apt-get}
run against ocicache with a private C{sources.list} and C{Dir::} settings
(no chroot, nothing of the host's apt touched).

    repo = DebRepository(tmp / "repo")
    repo.add("hello", "1.0", payload_size=4096)
    repo.publish()                       # Packages, Packages.gz, Release
    web = Nginx(repo.root, tmp / "nginx").start()
    apt = Apt(tmp / "apt", f"{ocicache}/files/debian")
    apt.run("update"); apt.run("install", "--download-only", "-y", "hello")
"""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

from . import free_port, require_binary, spawn, stop_process, wait_for_http

__all__ = ["Apt", "DebRepository", "Dnf", "Nginx", "RpmRepository"]


class DebRepository:
    """A flat-pool Debian repository: C{pool/main/<name>_<version>_all.deb} and C{dists/stable/main/binary-amd64}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._work = root.parent / (root.name + "-build")

    def add(self, name: str, version: str, payload_size: int = 4096) -> Path:
        """Build C{name}_{version}_all.deb (with C{payload_size} bytes of data) into the pool."""
        require_binary("dpkg-deb")
        build = self._work / f"{name}-{version}"
        (build / "DEBIAN").mkdir(parents=True, exist_ok=True)
        (build / "DEBIAN" / "control").write_text(
            f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Tests <t@example.org>\n"
            f"Description: a test package\n")
        data = build / "usr" / "share" / name
        data.mkdir(parents=True, exist_ok=True)
        (data / "payload").write_bytes(os.urandom(payload_size))
        pool = self.root / "pool" / "main"
        pool.mkdir(parents=True, exist_ok=True)
        deb = pool / f"{name}_{version}_all.deb"
        subprocess.run(["dpkg-deb", "-Zgzip", "--build", str(build), str(deb)], check=True, capture_output=True)
        return deb

    def publish(self, by_hash: bool = False) -> None:
        """
        Write the indexes: C{Packages}, C{Packages.gz} and C{Release}; with
        C{by_hash}, also their C{by-hash/} copies, which C{Release} then
        tells apt to fetch (C{Acquire-By-Hash: yes}).
        """
        require_binary("apt-ftparchive")
        binary = self.root / "dists" / "stable" / "main" / "binary-amd64"
        binary.mkdir(parents=True, exist_ok=True)
        packages = subprocess.run(["apt-ftparchive", "packages", "pool"], cwd=self.root, check=True,
                                  capture_output=True).stdout
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(gzip.compress(packages))
        release = subprocess.run(
            ["apt-ftparchive", "-o", f"APT::FTPArchive::DoByHash={int(by_hash)}",
             "-o", "APT::FTPArchive::Release::Codename=stable",
             "-o", "APT::FTPArchive::Release::Suite=stable", "-o", "APT::FTPArchive::Release::Components=main",
             "-o", "APT::FTPArchive::Release::Architectures=amd64", "release", "dists/stable"],
            cwd=self.root, check=True, capture_output=True).stdout
        (self.root / "dists" / "stable" / "Release").write_bytes(release)


class Nginx:
    """nginx serving C{root} on loopback, one access log line per request."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def start(self) -> Nginx:
        binary = require_binary("nginx")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            f"daemon off;\nuser root;\nworker_processes 1;\npid {self.workdir}/nginx.pid;\n"
            f"error_log {self.workdir}/error.log;\nevents {{ worker_connections 256; }}\n"
            "http {\n"
            f"  access_log {self.access_log};\n"
            f"  client_body_temp_path {self.workdir}/body; proxy_temp_path {self.workdir}/proxy;\n"
            f"  fastcgi_temp_path {self.workdir}/fcgi; uwsgi_temp_path {self.workdir}/uwsgi;\n"
            f"  scgi_temp_path {self.workdir}/scgi;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}\n"
            "}\n")
        self.proc = spawn([binary, "-c", str(conf), "-p", str(self.workdir)], str(self.workdir / "nginx.out"),
                          str(self.workdir))
        try:
            wait_for_http(self.url + "/", expect=(200, 403, 404), proc=self.proc, what="nginx",
                          log=str(self.workdir / "error.log"))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Apt:
    """apt-get with its own sources, lists, cache and status: nothing of the host's apt is read or written."""

    def __init__(self, workdir: Path, url: str, suite: str = "stable") -> None:
        require_binary("apt-get")
        self.workdir = workdir
        for sub in ("state/lists/partial", "cache/archives/partial", "etc/preferences.d", "etc/trusted.gpg.d",
                    "etc/apt.conf.d"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "status").write_text("")
        (workdir / "sources.list").write_text(f"deb [trusted=yes] {url} {suite} main\n")

    @property
    def archives(self) -> Path:
        return self.workdir / "cache" / "archives"

    def options(self) -> list[str]:
        w = self.workdir
        settings = {
            "Dir::Etc::sourcelist": f"{w}/sources.list", "Dir::Etc::sourceparts": "-",
            "Dir::Etc::preferencesparts": f"{w}/etc/preferences.d", "Dir::Etc::parts": f"{w}/etc/apt.conf.d",
            "Dir::Etc::trustedparts": f"{w}/etc/trusted.gpg.d", "Dir::State": f"{w}/state",
            "Dir::State::status": f"{w}/status", "Dir::Cache": f"{w}/cache", "Debug::NoLocking": "1",
            "APT::Sandbox::User": "root", "Acquire::Languages": "none", "APT::Architecture": "amd64",
            "APT::Architectures": "amd64", "Acquire::http::Proxy": "DIRECT", "Acquire::Retries": "0",
            "Acquire::http::Timeout": "20",
        }
        return [option for name, value in settings.items() for option in ("-o", f"{name}={value}")]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(["apt-get", *self.options(), *args], capture_output=True, text=True, env=env,
                              timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"apt-get {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done


class RpmRepository:
    """An RPM repository: noarch packages built by C{rpmbuild}, indexed by C{createrepo_c}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._work = root.parent / (root.name + "-build")

    def add(self, name: str, version: str, payload_size: int = 4096) -> Path:
        require_binary("rpmbuild")
        self._work.mkdir(parents=True, exist_ok=True)
        spec = self._work / f"{name}-{version}.spec"
        spec.write_text(
            f"Name: {name}\nVersion: {version}\nRelease: 1\nSummary: a test package\nLicense: MIT\n"
            "BuildArch: noarch\n%description\na test package\n%install\n"
            f"mkdir -p %{{buildroot}}/usr/share/{name}\n"
            f"head -c {payload_size} /dev/urandom > %{{buildroot}}/usr/share/{name}/payload\n"
            f"%files\n/usr/share/{name}/payload\n")
        top = self._work / "top"
        subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], check=True,
                       capture_output=True)
        built = top / "RPMS" / "noarch" / f"{name}-{version}-1.noarch.rpm"
        target = self.root / "Packages" / built.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(built.read_bytes())
        return target

    def publish(self) -> None:
        require_binary("createrepo_c")
        subprocess.run(["createrepo_c", "--no-database", "--general-compress-type=gz", str(self.root)],
                       check=True, capture_output=True)


class Dnf:
    """dnf with its own repository file, cache and install root."""

    def __init__(self, workdir: Path, url: str) -> None:
        require_binary("dnf")
        self.workdir = workdir
        for sub in ("repos", "root", "cache", "dest"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "repos" / "ocicache.repo").write_text(
            f"[ocicache]\nname=ocicache\nbaseurl={url}/\ngpgcheck=0\nenabled=1\nmetadata_expire=0\n")

    @property
    def dest(self) -> Path:
        return self.workdir / "dest"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        w = self.workdir
        command = ["dnf", "-y", f"--installroot={w}/root", "--releasever=1", f"--setopt=reposdir={w}/repos",
                   f"--setopt=cachedir={w}/cache", "--setopt=install_weak_deps=0", "--disableplugin=*",
                   "--setopt=retries=1", "--downloadonly", f"--destdir={w}/dest", *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"dnf {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done
