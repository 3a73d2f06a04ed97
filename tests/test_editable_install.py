"""
C{pip install -e .} gives a working C{twistd ocicache}.

With the old flat layout a PEP 660 editable install hid
C{twisted/plugins/ocicache_plugin.py} from twistd's plugin scan, so
C{twistd ocicache} said C{Unknown command: ocicache}.  The C{src/} layout
fixes that; this test proves it for real: the repository's tracked files
are copied to a temporary tree (so the install writes nothing into the
work tree and no other test's C{dropin.cache} is involved), installed with
C{pip install -e} into a fresh venv without system site packages (so an
ocicache installed elsewhere cannot make it pass), and the venv's own
C{twistd} and C{python} are run with no C{PYTHONPATH}.

The helpers take the source tree as an argument, so the same checks can be
pointed at another tree by hand (e.g. C{git archive 27b6679}, the old flat
layout, where L{check_twistd_help} fails with C{Unknown command}).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ocitest import REPO_ROOT, free_port, http_request, log_tail, spawn, stop_process, wait_for_http

pytestmark = pytest.mark.integration

PIP_TIMEOUT = 600.0
"""Seconds for C{pip install -e}: a cold pip cache downloads Twisted and friends."""
RUN_TIMEOUT = 60.0
"""Seconds for one short command in the venv."""
MARKER_VERSION = "0.0.0+editable-check"

# Variables that would let the venv's interpreter or pip see something other
# than the venv and the tree.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV",
                "PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_REQUIRE_VIRTUALENV")
# Variables that choose the daemon's default cache directory besides HOME.
_CACHE_ENV = ("CACHE_DIRECTORY", "XDG_CACHE_HOME")


def copy_tracked_files(repo: Path, dest: Path) -> Path:
    """
    Copy the work-tree versions of the files C{git ls-files} lists in
    C{repo} to C{dest} (uncommitted edits included, untracked files and
    C{.git} not); returns C{dest}.
    """
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True,
                            timeout=RUN_TIMEOUT).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = repo / name
        if not source.is_file():
            continue  # tracked but deleted (or a submodule) in the work tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest


def pip_env() -> dict[str, str]:
    """
    C{os.environ} without the variables in L{_DROPPED_ENV}: the user's own
    HOME, pip configuration (index, find-links) and download cache stay.
    """
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def run_env(home: Path) -> dict[str, str]:
    """
    L{pip_env} with C{HOME} set to C{home} and no L{_CACHE_ENV}, so the
    daemon's default cache directory is C{home/.cache/ocicache}.
    """
    env = {k: v for k, v in pip_env().items() if k not in _CACHE_ENV}
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class EditableInstall:
    """
    A venv with C{pip install -e tree} done; commands run in C{workdir}
    (outside C{tree}, so the current directory puts nothing on C{sys.path}).
    """

    tree: Path
    venv: Path
    workdir: Path
    env: dict[str, str] = field(repr=False)

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, program: str, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.bin(program), *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run("python", "-c", code)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command, for an assertion message."""
    return (f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-8000:]}\n--- stderr ---\n{result.stderr[-8000:]}")


def editable_install(tree: Path, scratch: Path) -> EditableInstall:
    """
    Create a venv under C{scratch} without system site packages and run its
    C{pip install -e tree}; fails with pip's output if the install does.
    """
    env_dir = scratch / "venv"
    home = scratch / "home"
    home.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(system_site_packages=False, with_pip=True, clear=True).create(env_dir)
    install = EditableInstall(tree=tree, venv=env_dir, workdir=home, env=run_env(home))
    result = subprocess.run([install.bin("pip"), "install", "-e", str(tree)], cwd=home, env=pip_env(),
                            capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert result.returncode == 0, describe(result)
    return install


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> EditableInstall:
    """One copy of the repository, installed editable into one fresh venv."""
    tree = copy_tracked_files(Path(REPO_ROOT), tmp_path_factory.mktemp("tree"))
    return editable_install(tree, tmp_path_factory.mktemp("editable"))


def check_twistd_help(install: EditableInstall) -> None:
    """The venv's C{twistd} knows the C{ocicache} subcommand."""
    result = install.run("twistd", "ocicache", "--help")
    assert result.returncode == 0, describe(result)
    assert "Unknown command" not in result.stdout + result.stderr
    assert "ocicache [--config FILE] [--listen ENDPOINT]..." in result.stdout, describe(result)
    assert "--listen=" in result.stdout, describe(result)


def check_imports_from_tree(install: EditableInstall) -> None:
    """The plugin and the package are imported from the tree's C{src/}, not a copy in the venv."""
    result = install.python(
        "import twisted.plugins.ocicache_plugin as p, ocicache; print(p.__file__); print(ocicache.__file__)"
    )
    assert result.returncode == 0, describe(result)
    plugin_file, package_file = (Path(line).resolve() for line in result.stdout.split())
    src = (install.tree / "src").resolve()
    assert plugin_file == src / "twisted" / "plugins" / "ocicache_plugin.py"
    assert package_file == src / "ocicache" / "__init__.py"


def check_daemon_serves(install: EditableInstall) -> None:
    """C{twistd -n ocicache --listen ...} answers C{GET /v2/} with 200 C{{}} and exits on SIGTERM."""
    port = free_port()
    log = install.workdir / "twistd.log"
    proc = spawn([install.bin("twistd"), "-n", "--pidfile=", "ocicache",
                  "--listen", f"tcp:{port}:interface=127.0.0.1"],
                 str(log), cwd=str(install.workdir), env=install.env)
    try:
        url = f"http://127.0.0.1:{port}/v2/"
        wait_for_http(url, timeout=30.0, proc=proc, log=str(log), what="twistd ocicache")
        # distribution-spec "Determining support": GET /v2/ -> 200.
        status, headers, body = http_request(url)
        assert (status, body) == (200, b"{}"), log_tail(str(log))
        assert headers.get("docker-distribution-api-version") == "registry/2.0"
        proc.send_signal(signal.SIGTERM)
        # twistd re-raises the SIGTERM it handled once the reactor has stopped.
        returncode = proc.wait(30.0)
        assert returncode == -signal.SIGTERM, f"twistd exited {returncode}\n{log_tail(str(log))}"
    finally:
        stop_process(proc)
    output = log.read_text()
    assert "Traceback" not in output
    assert output.rstrip().endswith("Server Shut Down."), output[-4000:]
    # The default cache dir came from the temporary HOME.
    assert (install.workdir / ".cache" / "ocicache").is_dir(), log_tail(str(log))


def check_edit_is_live(install: EditableInstall) -> None:
    """An edit to the tree is what the venv imports, without reinstalling."""
    version_file = install.tree / "src" / "ocicache" / "_version.py"
    original = version_file.read_text()
    try:
        version_file.write_text(f'__version__ = "{MARKER_VERSION}"\n')
        result = install.python("import ocicache; print(ocicache.__version__)")
        assert result.returncode == 0, describe(result)
        assert result.stdout.strip() == MARKER_VERSION
    finally:
        version_file.write_text(original)


def test_twistd_knows_ocicache(installed: EditableInstall) -> None:
    check_twistd_help(installed)


def test_imports_come_from_the_tree(installed: EditableInstall) -> None:
    check_imports_from_tree(installed)


def test_twistd_ocicache_serves_v2(installed: EditableInstall) -> None:
    check_daemon_serves(installed)


def test_edits_need_no_reinstall(installed: EditableInstall) -> None:
    check_edit_is_live(installed)
