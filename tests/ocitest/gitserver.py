"""
A real git server on loopback: C{git http-backend} run as CGI by lighttpd,
serving bare repositories under C{/repos/}; those under
C{/repos/private/} want Basic auth (lighttpd's mod_auth, a plain user
file).

    server = GitServer(workdir).start()
    server.create("public/app.git")          # a bare repository with a few commits
    server.commit("public/app.git", "more")  # a new commit on main, pushed
    server.url                                # http://127.0.0.1:PORT/repos
    server.stop()

Repositories allow partial clones (C{uploadpack.allowFilter}) and answer
protocol v2 (http-backend reads C{HTTP_GIT_PROTOCOL}).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from . import free_port, log_tail, require_binary, spawn, stop_process

__all__ = ["GitServer", "git"]

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
USER = "reader"
PASSWORD = "s3cret-pass"


def git(*args: str, cwd: str | None = None, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run C{git} with a clean configuration (no user's ~/.gitconfig), capturing its output."""
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": cwd or "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "ocitest", "GIT_AUTHOR_EMAIL": "ocitest@example.invalid",
        "GIT_COMMITTER_NAME": "ocitest", "GIT_COMMITTER_EMAIL": "ocitest@example.invalid",
        **(env or {}),
    }
    result = subprocess.run([require_binary("git"), *args], cwd=cwd, env=full_env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


class GitServer:
    """lighttpd + git http-backend, with a private area behind Basic auth."""

    def __init__(self, workdir: str, port: int | None = None) -> None:
        self.workdir = os.path.abspath(workdir)
        self.root = os.path.join(self.workdir, "repos")
        self.port = port or free_port()
        self.access_log = os.path.join(self.workdir, "access.log")
        self.log_path = os.path.join(self.workdir, "lighttpd.log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/repos"

    def _config(self) -> str:
        users = os.path.join(self.workdir, "users")
        with open(users, "w") as f:
            f.write(f"{USER}:{PASSWORD}\n")
        return f"""
server.modules = ("mod_alias", "mod_setenv", "mod_cgi", "mod_auth", "mod_authn_file", "mod_accesslog")
server.document-root = "{self.root}"
server.bind = "127.0.0.1"
server.port = {self.port}
server.errorlog = "{self.log_path}"
accesslog.filename = "{self.access_log}"
auth.backend = "plain"
auth.backend.plain.userfile = "{users}"
alias.url = ("/repos/" => "{HTTP_BACKEND}/")
$HTTP["url"] =~ "^/repos/" {{
    cgi.assign = ("" => "")
    setenv.set-environment = ("GIT_PROJECT_ROOT" => "{self.root}", "GIT_HTTP_EXPORT_ALL" => "1",
                              "HOME" => "{self.workdir}")
}}
$HTTP["url"] =~ "^/repos/private/" {{
    auth.require = ("" => ("method" => "basic", "realm" => "ocitest git", "require" => "valid-user"))
}}
"""

    @property
    def pid(self) -> int | None:
        """lighttpd's process id while it runs (its reaped CGIs count in its CPU)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> GitServer:
        os.makedirs(self.root, exist_ok=True)
        config = os.path.join(self.workdir, "lighttpd.conf")
        with open(config, "w") as f:
            f.write(self._config())
        self._proc = spawn([require_binary("lighttpd"), "-D", "-f", config], self.log_path + ".out",
                           self.workdir)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"lighttpd did not start:\n{log_tail(self.log_path + '.out')}"
                                       f"\n{log_tail(self.log_path)}") from None
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def create(self, name: str, commits: int = 3, size: int = 20000) -> str:
        """A bare repository C{name} with C{commits} commits on main, each adding a file of C{size} random bytes."""
        bare = os.path.join(self.root, name)
        git("init", "--bare", "-b", "main", bare)
        git("config", "uploadpack.allowFilter", "true", cwd=bare)
        git("config", "http.receivepack", "true", cwd=bare)
        work = bare + ".work"
        git("clone", bare, work, cwd=self.workdir)
        for index in range(commits):
            self._add(work, f"file{index}.bin", size, f"commit {index}")
        git("push", "origin", "HEAD:main", cwd=work)
        return bare

    def commit(self, name: str, message: str, size: int = 5000) -> str:
        """One more commit on C{name}'s main; returns its id."""
        work = os.path.join(self.root, name) + ".work"
        self._add(work, f"{message.replace(' ', '-')}.bin", size, message)
        git("push", "origin", "HEAD:main", cwd=work)
        return git("rev-parse", "HEAD", cwd=work).stdout.strip()

    def head(self, name: str) -> str:
        return git("rev-parse", "main", cwd=os.path.join(self.root, name)).stdout.strip()

    @staticmethod
    def _add(work: str, file: str, size: int, message: str) -> None:
        with open(os.path.join(work, file), "wb") as f:
            f.write(os.urandom(size))
        git("add", file, cwd=work)
        git("commit", "-q", "-m", message, cwd=work)
