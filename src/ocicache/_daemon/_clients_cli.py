"""
C{ocicache clients --mirror URL [--apply]}: the client configuration of
this host, so that its container runtimes pull through the mirror.

  - containerd: C{/etc/containerd/certs.d/<upstream>/hosts.toml} for each
    configured upstream, and C{_default/hosts.toml} for every other
    registry (the mirror first, then the registry itself);
  - podman, buildah, skopeo, CRI-O: a drop-in,
    C{/etc/containers/registries.conf.d/ocicache.conf}, with a
    path-prefixed mirror per upstream (C{mirror/docker.io});
  - docker: C{registry-mirrors} in C{/etc/docker/daemon.json}, merged into
    the file as it is, its other keys kept;
  - apt and dnf, with C{[[files]]} remotes of kind C{deb} or C{rpm}: every
    URI of the remote in C{/etc/apt/sources.list}, C{sources.list.d/*.list}
    and C{*.sources}, and every C{baseurl} of it in C{/etc/yum.repos.d/*.repo},
    rewritten to the mirror's C{/files/<name>}, the rest of each file kept
    (a rewritten repository's C{metalink} and C{mirrorlist} are commented out:
    they would send dnf to the remote's mirrors directly);
  - git, with C{[[git]]} hosts: C{url.<mirror>/git/<name>/.insteadOf} and a
    C{pushInsteadOf} back to the host in C{/etc/gitconfig}, a block between
    marker lines that replaces its previous self, the rest of the file kept.

Without C{--apply} it prints each file as it would be.  With it, each
file that would change is written atomically (a temporary file beside
it, then a rename), the one it replaces kept as C{<name>.ocicache-backup};
a file already as it should be is left alone, so running it twice changes
nothing.  C{--root} writes under another directory (a chroot, an image
being built, a test).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from attrs import frozen
from hyperlink import DecodedURL

from .._ops._config import Config, UpstreamConfig

__all__ = ["ClientFile", "add_clients_command", "client_files", "parse_mirror", "run_clients"]

BACKUP_SUFFIX = ".ocicache-backup"
_GIT_BEGIN = "# >>> ocicache clients: git fetches through the mirror, pushes go to the host itself"
_GIT_END = "# <<< ocicache clients"
_DOCKER_HUB = "registry-1.docker.io"


class ClientsError(Exception):
    """What stops the command, said in one line."""


@frozen
class ClientFile:
    """One file of the client configuration: where, and what it should hold."""

    path: str
    """Absolute, as on the host (C{--root} is prefixed when written)."""
    content: str
    what: str


def parse_mirror(text: str) -> DecodedURL:
    """The C{--mirror} URL: C{http(s)://host[:port]}, nothing else."""
    try:
        url = DecodedURL.from_text(text)
        url.port  # noqa: B018 (a bad port raises only when read)
    except Exception:
        raise ClientsError(f"--mirror {text[:80]!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ClientsError(f"--mirror {text[:80]!r} must be an http:// or https:// URL with a host")
    if url.port is not None and not 0 < url.port < 65536:
        raise ClientsError(f"--mirror {text[:80]!r}: the port must be 1 to 65535")
    if any(url.userinfo):
        # Never echoed: it holds a password.
        raise ClientsError("--mirror must not hold credentials (clients log in themselves)")
    if any(url.path) or url.query or url.fragment:
        raise ClientsError(f"--mirror {text[:80]!r} must be just scheme, host and port")
    return url


def _authority(url: DecodedURL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    default = {"http": 80, "https": 443}[url.scheme]
    return host if url.port in (None, default) else f"{host}:{url.port}"


def _origin(url: DecodedURL) -> str:
    return f"{url.scheme}://{_authority(url)}"


def _registry_location(upstream: UpstreamConfig) -> DecodedURL:
    """
    Where the registry really is: the fallback when the mirror fails.  A
    mirror tier's URL is another mirror, not the registry: its name then.
    """
    if upstream.kind == "registry":
        return upstream.url
    host = _DOCKER_HUB if upstream.is_docker_hub else upstream.name
    return DecodedURL.from_text(f"https://{host}")


def _toml_string(text: str) -> str:
    # JSON's string escapes are TOML basic-string escapes.
    return json.dumps(text)


def _hosts_toml(mirror: DecodedURL, server: DecodedURL | None, registry: str) -> str:
    fallback = "`server`, the registry itself" if server else "the registry the image names"
    lines = [
        f"# Written by `ocicache clients`: containerd (1.6+) asks the mirror first, with ?ns={registry},",
        f"# then {fallback}, when the mirror is down or answers an error or 404.",
        "",
    ]
    if server is not None:
        lines += [f"server = {_toml_string(_origin(server))}", ""]
    lines += [f"[host.{_toml_string(_origin(mirror))}]", '  capabilities = ["pull", "resolve"]', ""]
    return "\n".join(lines)


def _registries_conf(mirror: DecodedURL, upstreams: tuple[UpstreamConfig, ...]) -> str:
    insecure = mirror.scheme == "http"
    lines = [
        "# Written by `ocicache clients`: podman, buildah, skopeo and CRI-O",
        "# (containers-registries.conf(5), v2) pull each registry through the mirror,",
        "# which serves it under its name as a path prefix; when the mirror is down or",
        "# answers an error, the pull goes to `location` itself.",
        "",
    ]
    for upstream in upstreams:
        location = _authority(_registry_location(upstream))
        lines += [
            "[[registry]]",
            f"prefix = {_toml_string(upstream.name)}",
            f"location = {_toml_string(location)}",
            "",
            "[[registry.mirror]]",
            f"location = {_toml_string(_authority(mirror) + '/' + upstream.name)}",
        ]
        if insecure:
            lines.append("insecure = true")
        lines.append("")
    return "\n".join(lines)


def _daemon_json(mirror: DecodedURL, existing: str | None, path: str) -> str:
    """C{daemon.json} with the mirror first in C{registry-mirrors}, every other key kept."""
    document: dict[str, Any] = {}
    if existing is not None and existing.strip():
        try:
            loaded = json.loads(existing)
        except ValueError as e:
            raise ClientsError(f"{path} is not JSON ({e}); fix it or move it aside, it was left alone") from None
        if not isinstance(loaded, dict):
            raise ClientsError(f"{path} is not a JSON object; fix it or move it aside, it was left alone")
        document = loaded
    ours = _origin(mirror)
    mirrors = document.get("registry-mirrors", [])
    if not isinstance(mirrors, list):
        raise ClientsError(f"{path}: registry-mirrors is not a list; fix it, the file was left alone")
    others = [m for m in mirrors if isinstance(m, str) and m.rstrip("/") != ours]
    document["registry-mirrors"] = [ours, *others]
    return json.dumps(document, indent=2) + "\n"


def _gitconfig(mirror: DecodedURL, config: Config, existing: str | None) -> str | None:
    """
    C{/etc/gitconfig} with the block of C{insteadOf} rules for every
    C{[[git]]} host (git-config(1), "url.<base>.insteadOf"); C{None} when
    there is none and no block to remove.
    """
    hosts = config.git.upstreams if config.git is not None else ()
    kept: list[str] = []
    inside = False
    for line in (existing or "").splitlines():
        if line == _GIT_BEGIN:
            inside = True
        elif line == _GIT_END and inside:
            inside = False
        elif not inside:
            kept.append(line)
    if not hosts and len(kept) == len((existing or "").splitlines()):
        return None
    block: list[str] = []
    if hosts:
        block.append(_GIT_BEGIN)
        for host in hosts:
            upstream = host.url.to_uri().to_text().rstrip("/") + "/"
            through = f"{_origin(mirror)}/git/{host.name}/"
            block += [f'[url "{through}"]', f"\tinsteadOf = {upstream}",
                      f'[url "{upstream}"]', f"\tpushInsteadOf = {upstream}"]
        block.append(_GIT_END)
    lines = kept + block
    return "\n".join(lines) + "\n" if lines else ""


def _rewrite_token(token: str, prefixes: list[tuple[str, str]]) -> str:
    for remote, through in prefixes:
        if token == remote or token.startswith(remote + "/"):
            return through + token[len(remote):]
    return token


def _rewritten_apt(text: str, prefixes: list[tuple[str, str]]) -> str:
    """Each whitespace-separated URI of a remote, in one-line and deb822 sources alike."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            lines.append(line)
            continue
        lines.append("".join(_rewrite_token(part, prefixes) for part in re.split(r"(\s+)", line)))
    return "".join(lines)


def _rewritten_repo(text: str, prefixes: list[tuple[str, str]]) -> str:
    """The C{baseurl}s of a remote; in each section rewritten, its C{metalink} and C{mirrorlist} commented out."""
    sections: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            sections.append([])
        sections[-1].append(line)
    out = []
    for section in sections:
        rewritten = []
        changed = False
        for line in section:
            name, equals, value = line.partition("=")
            if equals and name.strip().lower() == "baseurl":
                new = name + equals + "".join(_rewrite_token(part, prefixes) for part in re.split(r"([\s,]+)", value))
                changed = changed or new != line
                line = new
            rewritten.append(line)
        if changed:
            rewritten = [f"#{line}" if line.partition("=")[0].strip().lower() in ("metalink", "mirrorlist")
                         else line for line in rewritten]
        out += rewritten
    return "".join(out)


def _package_files(mirror: DecodedURL, config: Config, root: str,
                   read: Callable[[str], str | None]) -> list[ClientFile]:
    """apt's and dnf's files that name a C{[[files]]} remote, rewritten to go through the mirror."""
    prefixes: dict[str, list[tuple[str, str]]] = {"deb": [], "rpm": []}
    for remote in config.files_remotes:
        if remote.kind.value in prefixes:
            prefixes[remote.kind.value].append(
                (remote.url.to_uri().to_text().rstrip("/"), f"{_origin(mirror)}/files/{remote.name}"))
    found: list[ClientFile] = []
    places = [("deb", "/etc/apt", ("sources.list",)), ("deb", "/etc/apt/sources.list.d", (".list", ".sources")),
              ("rpm", "/etc/yum.repos.d", (".repo",))]
    for kind, directory, endings in places:
        if not prefixes[kind]:
            continue
        try:
            names = sorted(os.listdir(root + directory))
        except OSError:
            continue
        for name in names:
            if not name.endswith(endings) or (directory == "/etc/apt" and name != "sources.list"):
                continue
            path = f"{directory}/{name}"
            present = read(path)
            if present is None:
                continue
            rewrite = _rewritten_apt if kind == "deb" else _rewritten_repo
            content = rewrite(present, prefixes[kind])
            if content != present:
                found.append(ClientFile(path, content, f"{'apt' if kind == 'deb' else 'dnf'}: [[files]] remotes"
                                                       " through the mirror"))
    return found


def client_files(mirror: DecodedURL, config: Config, read: Callable[[str], str | None],
                 root: str = "") -> list[ClientFile]:
    """
    Every file of the client configuration for C{config}'s upstreams;
    C{read} gives a file's present content (C{None}: absent), for the
    ones merged into, which errors name under C{root}.
    """
    files = []
    for upstream in config.upstreams:
        files.append(ClientFile(
            f"/etc/containerd/certs.d/{upstream.name}/hosts.toml",
            _hosts_toml(mirror, _registry_location(upstream), upstream.name),
            f"containerd: {upstream.name} through the mirror"))
    files.append(ClientFile("/etc/containerd/certs.d/_default/hosts.toml", _hosts_toml(mirror, None, "<registry>"),
                            "containerd: every other registry through the mirror, then itself"))
    files.append(ClientFile("/etc/containers/registries.conf.d/ocicache.conf",
                            _registries_conf(mirror, config.upstreams),
                            "podman, buildah, skopeo, CRI-O: a mirror per upstream"))
    path = "/etc/docker/daemon.json"
    files.append(ClientFile(path, _daemon_json(mirror, read(path), root + path),
                            "docker: the mirror for Docker Hub (the default upstream)"))
    files += _package_files(mirror, config, root, read)
    gitconfig = _gitconfig(mirror, config, read("/etc/gitconfig"))
    if gitconfig is not None:
        files.append(ClientFile("/etc/gitconfig", gitconfig, "git: the [[git]] hosts through the mirror"))
    return files


def _read(root: str) -> Callable[[str], str | None]:
    def read(path: str) -> str | None:
        try:
            with open(root + path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise ClientsError(f"cannot read {root + path}: {getattr(e, 'strerror', None) or e}") from None

    return read


def _write(target: str, content: str, present: str | None) -> str | None:
    """
    Write C{target} atomically; keep what it held as its backup.  The
    backup's path, if one was made.
    """
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    backup = None
    if present is not None:
        backup = target + BACKUP_SUFFIX
        _replace(backup, present, directory)
    _replace(target, content, directory)
    return backup


def _replace(target: str, content: str, directory: str) -> None:
    mode = 0o644
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        pass
    descriptor, temporary = tempfile.mkstemp(prefix=".ocicache-", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def add_clients_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    clients = command("clients", "write this host's containerd, podman/CRI-O and docker configuration to pull"
                                 " through the mirror (prints it unless --apply)")
    clients.add_argument("--mirror", required=True, help="the mirror's URL as clients reach it, e.g."
                                                         " http://mirror.internal:5000")
    clients.add_argument("--apply", action="store_true", help="write the files (atomically, keeping a backup of"
                                                              f" each one changed as <file>{BACKUP_SUFFIX})")
    clients.add_argument("--root", default="/", help="write under this directory instead of / (default: /)")


def run_clients(config: Config, arguments: argparse.Namespace, out: Any = None) -> int:
    out = out or sys.stdout
    root = os.path.abspath(arguments.root).rstrip("/")
    try:
        mirror = parse_mirror(arguments.mirror)
        read = _read(root)
        files = client_files(mirror, config, read, root)
        changed = 0
        for file in files:
            target = root + file.path
            present = read(file.path)
            if present == file.content:
                out.write(f"unchanged: {target} ({file.what})\n")
                continue
            changed += 1
            if not arguments.apply:
                out.write(f"would write: {target} ({file.what})\n")
                out.write("".join(f"    {line}\n" for line in file.content.splitlines()))
                continue
            try:
                backup = _write(target, file.content, present)
            except OSError as e:
                raise ClientsError(f"cannot write {target}: {e.strerror}") from None
            out.write(f"wrote: {target} ({file.what})" + (f"; the old one is {backup}" if backup else "") + "\n")
    except ClientsError as e:
        sys.stderr.write(f"ocicache: {e}\n")
        return 2
    if changed and not arguments.apply:
        out.write(f"{changed} file(s) to write: run again with --apply\n")
    if changed and arguments.apply and any(f.path.startswith("/etc/containerd/") for f in files):
        out.write('containerd reads these with config_path = "/etc/containerd/certs.d" under'
                  ' [plugins."io.containerd.grpc.v1.cri".registry] (ctr: --hosts-dir); docker needs a restart.\n')
    return 0
