"""
Fleet nodes on one Redis, each with a disk of its own, for the tests of
what the nodes share (git, files): each node's config is the same but for
its name, its ports and its cache directory, plus what the test adds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from . import free_port, wait_for
from .daemon import Daemon, start_node


class FleetNodes:
    """
    Starts nodes named C{node0}, C{node1}, ... under C{base}, their
    configs ended by C{tail(index)} (their [[git]] or [[files]] tables).
    """

    def __init__(self, base: Path, redis_url: str, secret: str, tail: Callable[[int], str]) -> None:
        self._base = base
        self._redis_url = redis_url
        self._secret = base / "fleet.secret"
        self._secret.write_text(secret + "\n")
        self._tail = tail
        self.started: list[Daemon] = []

    def start(self, count: int, storage: dict[str, object] | None = None) -> list[Daemon]:
        """C{count} more nodes, once each is in the fleet; C{storage}: their [storage] table."""
        nodes = []
        for index in range(len(self.started), len(self.started) + count):
            internal = free_port()
            tables: dict[str, dict[str, object]] = {"fleet": {
                "redis": self._redis_url, "node": f"node{index}",
                "internal_listen": f"tcp:{internal}:interface=127.0.0.1",
                "peer_url": f"http://127.0.0.1:{internal}", "secret_file": str(self._secret), "lock_ttl": "5s",
            }}
            if storage is not None:
                tables["storage"] = storage
            daemon = start_node(self._base, f"node{index}", tables, self._tail(index))
            self.started.append(daemon)
            nodes.append(daemon)
        for daemon in nodes:
            wait_for(partial(_joined, daemon), 15, what="the node to join the fleet")
        return nodes

    def stop_all(self) -> None:
        """Stop every node started."""
        for daemon in self.started:
            daemon.stop()


def _joined(daemon: Daemon) -> bool:
    return "is in the fleet" in daemon.log_text()
