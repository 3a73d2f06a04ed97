"""
C{ocicache ls}, C{purge} and C{pulls}: the admin API
(L{ocicache._web._admin}) on the running daemon's operator listener
(C{[metrics] listen}, or C{--url}), as tables, or its JSON with C{--json}.
C{--token-file} sends the C{[admin]} token, for a daemon on another host.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

from .._ops._config import Config
from ._daemon_client import DaemonClient, UsageError, error_message, human_size, listen_url

__all__ = ["ADMIN_COMMANDS", "add_admin_commands", "run_admin_command"]

ADMIN_COMMANDS = ("ls", "purge", "pulls")


def add_admin_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    ls = command("ls", "list what the running daemon's cache holds: repositories (default), tags or blobs")
    ls.add_argument("what", nargs="?", choices=("repositories", "tags", "blobs"), default="repositories")
    purge = command("purge", "remove from the running daemon's cache: a reference, a digest, or repositories")
    target = purge.add_mutually_exclusive_group(required=True)
    target.add_argument("reference", nargs="?", metavar="REF",
                        help="registry/repo:tag (that tag) or registry/repo@digest")
    target.add_argument("--digest", help="one manifest or blob, wherever it came from")
    target.add_argument("--repository", metavar="GLOB",
                        help="every repository matching upstream/repo GLOB (* stops at /, ** does not)")
    pulls = command("pulls", "who pulled which reference and digest, and when (the pull log)")
    pulls.add_argument("--days", type=float, help="only the last DAYS days (default: all that is kept)")
    for sub in (ls, purge, pulls):
        sub.add_argument("--url", help="the daemon's operator URL (default: from [metrics] listen)")
        sub.add_argument("--token-file", help="a file holding the [admin] token (for a daemon beyond loopback)")
        sub.add_argument("--json", action="store_true", help="print the API's JSON")


def run_admin_command(config: Config, arguments: argparse.Namespace) -> int:
    try:
        return _run(config, arguments)
    except UsageError as e:
        sys.stderr.write(f"ocicache {arguments.command}: {e}\n")
        return 2


def _run(config: Config, arguments: argparse.Namespace) -> int:
    if arguments.url is None and config.metrics.listen is None:
        raise UsageError("the admin API is on the operator listener: set [metrics] listen, or give --url")
    client = DaemonClient(arguments.url or listen_url(config.metrics.listen or "", "https"))
    headers = {}
    if arguments.token_file is not None:
        try:
            with open(arguments.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise UsageError(f"cannot read {arguments.token_file}: {e.strerror}") from None
        headers["Authorization"] = f"Bearer {token}"
    if arguments.command == "ls":
        method, target = "GET", f"/admin/{arguments.what}"
    elif arguments.command == "pulls":
        method, target = "GET", "/admin/pulls"
        if arguments.days is not None:
            target += "?" + urllib.parse.urlencode({"days": repr(arguments.days)})
    else:
        if arguments.digest is not None:
            query = {"digest": arguments.digest}
        elif arguments.repository is not None:
            query = {"repository": arguments.repository}
        else:
            query = {"reference": arguments.reference}
        method, target = "POST", "/admin/purge?" + urllib.parse.urlencode(query)
    try:
        status, _, body = client.request(method, target, headers)
    except (OSError, http.client.HTTPException) as e:
        sys.stderr.write(f"ocicache {arguments.command}: cannot reach the daemon at {client.url}: {e}\n")
        return 1
    if status != 200:
        sys.stderr.write(f"ocicache {arguments.command}: {error_message(status, body)}\n")
        return 1
    answer = json.loads(body)
    if arguments.json:
        print(json.dumps(answer, indent=2))
        return 0
    _print(arguments, answer)
    return 0


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print(arguments: argparse.Namespace, answer: Any) -> None:
    if arguments.command == "purge":
        purged = answer["purged"]
        print(f"purged {purged['tags']} tags, {purged['manifests']} manifests, {purged['blobs']} blobs"
              f" ({human_size(purged['bytes'])})")
        for digest in purged["kept"]:
            print(f"kept {digest}: pinned, or part of a pull in progress")
    elif arguments.command == "pulls":
        for pull in answer["pulls"]:
            print(f"{_when(pull['at'])}  {pull['who']}  {pull['repository']}:{pull['reference']}"
                  f"  {pull['digest']}")
    elif arguments.what == "repositories":
        for row in answer:
            print(f"{row['repository']}  {row['blobs']} blobs  {human_size(row['bytes'])}  {row['tags']} tags"
                  f"  last used {_when(row['last_used'])}")
    elif arguments.what == "tags":
        for row in answer:
            print(f"{row['repository']}:{row['tag']}  {row['digest']}  checked {_when(row['checked_at'])}")
    else:
        for row in answer:
            print(f"{row['digest']}  {human_size(row['bytes'])}  {row['hits']} hits  last used"
                  f" {_when(row['last_used'])}  {','.join(row['repositories'])}")
