"""
Real S3 on loopback: a single-node Ceph cluster (one mon, one memstore
OSD, no mgr) and radosgw, from Debian's packages (ceph-mon, ceph-osd,
radosgw, ceph-common; bookworm ships 16.2, pacific).

    with Radosgw(workdir).start() as s3:
        s3.url, s3.access_key, s3.secret_key

Everything binds to 127.0.0.1, on free ports: the OSD's from a free range
of its own, so that two test runs on one machine keep apart.  The
pitfalls met on a 2-core Debian machine, each handled below:

  - SIGTERM skips the OSD's unmount unless C{osd_fast_shutdown = false};
  - pacific's OSD may send mon commands before it has the monmap ("wrong
    fsid", it exits): no CRUSH or class updates at start, the OSD put in
    the CRUSH map once by hand, and its start retried;
  - PID 1 reaps orphans slowly, so a zombie is not a live daemon;
  - each osdmap change waits for a paxos round: shortened, and the rgw
    pools created in one librados session (Debian's python3-rados, which
    lives in the system Python, not in a virtualenv).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable

from . import MissingBinary, free_port, require_binary

__all__ = ["Radosgw"]

_PACKAGES = "ceph-mon ceph-osd radosgw ceph-common"

_POOLS = (".rgw.root", "default.rgw.log", "default.rgw.control", "default.rgw.meta",
          "default.rgw.buckets.index", "default.rgw.buckets.data", "default.rgw.buckets.non-ec")

_CREATE_POOLS = """
import json, sys, rados
cluster = rados.Rados(conffile=sys.argv[1]); cluster.connect(timeout=10)
for pool in sys.argv[2:]:
    cluster.mon_command(json.dumps({"prefix": "osd pool create", "pool": pool, "pg_num": 8, "pgp_num": 8}), b"")
    cluster.mon_command(json.dumps({"prefix": "osd pool application enable", "pool": pool, "app": "rgw"}), b"")
cluster.wait_for_latest_osdmap(); cluster.shutdown()
"""


def _require() -> None:
    for name in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool", "ceph-authtool"):
        try:
            require_binary(name)
        except MissingBinary:
            raise MissingBinary(
                f"required program {name!r} is not on PATH; install it with "
                f"'apt-get install -y --no-install-recommends {_PACKAGES}'"
            ) from None


class Radosgw:
    """
    A single-node Ceph with radosgw under C{workdir}, on free loopback ports.
    """

    def __init__(self, workdir: str, access_key: str = "ocitestkey", secret_key: str = "ocitestsecret") -> None:
        self.workdir = os.path.abspath(workdir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.mon_port = free_port()
        self.port = free_port()
        self.osd_ports = _free_range(100)
        """The OSD's own ports: a range no other cluster on this machine uses."""
        self.conf = os.path.join(self.workdir, "ceph.conf")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle

    def start(self, timeout: float = 90.0) -> Radosgw:
        _require()
        if not os.path.exists(os.path.join(self.workdir, "bootstrapped")):
            self._bootstrap()
        self._start_daemons(timeout)
        return self

    def stop(self) -> None:
        """Stop every daemon, radosgw first (memstore saves itself on a clean stop)."""
        for name in ("client.rgw.a", "osd.0", "mon.a"):
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def stop_gateway(self) -> None:
        """Stop radosgw only: S3 refuses connections; the cluster stays."""
        pid = self._pid("client.rgw.a")
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)

    def start_gateway(self, timeout: float = 60.0) -> None:
        self._start_rgw(timeout)

    def wipe(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Radosgw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def log_tail(self, lines: int = 40) -> str:
        path = os.path.join(self.workdir, "log", "client.rgw.a.log")
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def access_log(self) -> list[str]:
        """
        radosgw's access lines (beast, at debug_rgw 1): method, path,
        status, bytes and the Range asked for, one request each.
        """
        path = os.path.join(self.workdir, "log", "client.rgw.a.log")
        try:
            with open(path, errors="replace") as f:
                return [line for line in f if " beast: " in line]
        except OSError:
            return []

    # -- the parts

    def _run(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout

    def _spawn(self, *args: str) -> None:
        """
        Start a daemon that forks into the background: its output goes to a
        file, never a pipe it would hold open after the parent exits.
        """
        with open(os.path.join(self.workdir, "log", "spawn.log"), "ab") as log:
            result = subprocess.run(list(args), stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode} (see {log.name})")

    def _ceph(self, *args: str) -> str:
        return self._run("ceph", "-c", self.conf, "--connect-timeout", "5", *args, timeout=30)

    def _bootstrap(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        for sub in ("run", "log", "crash", "mon/ceph-a", "osd/ceph-0", "rgw"):
            os.makedirs(os.path.join(self.workdir, sub))
        fsid = str(uuid.uuid4())
        with open(self.conf, "w") as f:
            f.write(self._config(fsid))
        keyring = os.path.join(self.workdir, "keyring")
        monmap = os.path.join(self.workdir, "monmap")
        self._run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self._run("monmaptool", "--create", "--addv", "a", f"[v1:127.0.0.1:{self.mon_port}]", "--fsid", fsid, monmap)
        self._run("ceph-mon", "-c", self.conf, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring)
        self._spawn("ceph-mon", "-c", self.conf, "-i", "a")
        _wait(lambda: self._ok("mon", "stat"), 30, "the Ceph mon")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._ceph("osd", "create", osd_uuid).strip()
        self._run("ceph-osd", "-c", self.conf, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
        self._ceph("osd", "crush", "add", f"osd.{osd_id}", "1.0", "host=localhost", "root=default")
        self._run("/usr/bin/python3", "-c", _CREATE_POOLS, self.conf, *_POOLS)
        open(os.path.join(self.workdir, "bootstrapped"), "w").close()

    def _start_daemons(self, timeout: float) -> None:
        if not self._running("mon.a"):
            self._spawn("ceph-mon", "-c", self.conf, "-i", "a")
        _wait(lambda: self._ok("mon", "stat"), 30, "the Ceph mon")
        for attempt in range(3):
            if not self._running("osd.0"):
                self._spawn("ceph-osd", "-c", self.conf, "-i", "0")
            try:
                _wait(self._osd_up, timeout / 3, "the Ceph OSD", give_up=lambda: not self._running("osd.0"))
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self._start_rgw(timeout / 3)
        try:
            self._run("radosgw-admin", "-c", self.conf, "-n", "client.admin", "user", "info", "--uid=ocitest")
        except RuntimeError:
            self._run("radosgw-admin", "-c", self.conf, "-n", "client.admin", "user", "create", "--uid=ocitest",
                      "--display-name=ocitest", f"--access-key={self.access_key}",
                      f"--secret-key={self.secret_key}")

    def _start_rgw(self, timeout: float) -> None:
        if not self._running("client.rgw.a"):
            self._spawn("radosgw", "-c", self.conf, "-n", "client.rgw.a")
        _wait(self._gateway_answers, timeout, "radosgw", give_up=lambda: not self._running("client.rgw.a"))

    def _osd_up(self) -> bool:
        try:
            return any(line.startswith("osd.0 up ") and " in " in line
                       for line in self._ceph("osd", "dump").splitlines())
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def _gateway_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2):
                return True
        except OSError:
            return False

    def _ok(self, *args: str) -> bool:
        try:
            self._ceph(*args)
            return True
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def _pid(self, name: str) -> int | None:
        try:
            with open(os.path.join(self.workdir, "run", f"{name}.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _running(self, name: str) -> bool:
        pid = self._pid(name)
        return pid is not None and _alive(pid)

    def _config(self, fsid: str) -> str:
        d = self.workdir
        return f"""[global]
fsid = {fsid}
mon_host = [v1:127.0.0.1:{self.mon_port}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr2 = false
ms_bind_ipv6 = false
ms_bind_port_min = {self.osd_ports}
ms_bind_port_max = {self.osd_ports + 99}
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
keyring = {d}/keyring
run_dir = {d}/run
admin_socket = {d}/run/$name.asok
pid_file = {d}/run/$name.pid
log_file = {d}/log/$name.log
crash_dir = {d}/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_autoscale_mode = off
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
mon_data_avail_warn = 2
mon_data_avail_crit = 1
log_to_stderr = false
err_to_stderr = false
debug_ms = 0
debug_rocksdb = 0/0
debug_memstore = 0/0
mon_warn_on_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
[mon]
mon_data = {d}/mon/$cluster-$id
mon_allow_pool_delete = true
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
[osd]
osd_data = {d}/osd/$cluster-$id
osd_objectstore = memstore
osd_fast_shutdown = false
osd_crush_update_on_start = false
osd_class_update_on_start = false
memstore_device_bytes = 4294967296
osd_memory_target = 939524096
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2
[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:{self.port}
rgw_data = {d}/rgw
rgw_dns_name = localhost
rgw_thread_pool_size = 32
rgw_enable_usage_log = false
rgw_max_chunk_size = 4194304
"""


def _free_range(width: int) -> int:
    """
    The first of C{width} consecutive loopback ports that are free now:
    Ceph's default (6800-6899) would make two clusters on one machine
    (two test runs) take each other's OSD for their own.
    """
    for _ in range(200):
        base = random.randrange(20000, 60000 - width, width)
        if all(_port_free(port) for port in range(base, base + width, 10)):
            return base
    raise RuntimeError(f"no {width} free ports in a row on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    """A live Ceph daemon: not a zombie (PID 1 here reaps slowly), and a ceph binary."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and (comm.startswith("ceph-") or comm.startswith("radosgw"))


def _wait(predicate: Callable[[], bool], timeout: float, what: str,
          give_up: Callable[[], bool] | None = None) -> None:
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if give_up is not None and time.monotonic() - started > 2 and give_up():
            break
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")
