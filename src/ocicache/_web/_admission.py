"""
Fair admission: who gets one of the registry's connection slots.

Two rules keep one client from taking every slot (issue 19: a single
address reopening 1,100 sockets as fast as they closed denied everyone
else for as long as it lasted):

  - one source address holds at most C{max_connections_per_address}
    connections; past it, that address's new connections are refused;
  - at C{max_connections}, the connection idle longest (no request in
    progress: a keep-alive between requests, or one whose head has not
    all arrived) is closed to admit the new one.  Only when no connection
    is idle is the new one refused.

Connections being closed for a newcomer still hold their descriptor until
they are gone, so at most L{MAX_EVICTING} are in that state at once: the
descriptors in use stay bounded by C{max_connections} plus that.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from typing import Generic, TypeVar

__all__ = ["MAX_EVICTING", "Admission", "Refused"]

MAX_EVICTING = 64
"""Connections closed to admit others that may not have gone yet."""

_Connection = TypeVar("_Connection")


class Refused(Enum):
    """Why a new connection is not admitted."""

    ADDRESS = "max_connections_per_address"
    CAP = "max_connections"


class Admission(Generic[_Connection]):
    """
    The open connections, by source address and by how long each has been
    idle, and the decision for each new one.
    """

    def __init__(self, max_connections: int, per_address: int) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        """0: no limit per address."""
        self._address: dict[_Connection, str | None] = {}
        self._by_address: Counter[str] = Counter()
        self._idle: dict[_Connection, None] = {}
        """The idle connections, longest idle first (a dict keeps insertion order)."""
        self._evicting: set[_Connection] = set()

    def __len__(self) -> int:
        return len(self._address)

    @property
    def connections(self) -> list[_Connection]:
        return list(self._address)

    def decide(self, address: str | None) -> _Connection | Refused | None:
        """
        For a new connection from C{address}: C{None} to admit it, a
        connection to close first (then admit it), or why it is refused.
        """
        if self.per_address and address is not None and self._by_address[address] >= self.per_address:
            return Refused.ADDRESS
        if len(self._address) - len(self._evicting) < self.max_connections:
            return None
        if len(self._evicting) >= MAX_EVICTING:
            return Refused.CAP
        for connection in self._idle:
            del self._idle[connection]
            self._evicting.add(connection)
            return connection
        return Refused.CAP

    def opened(self, connection: _Connection, address: str | None) -> None:
        """A connection is open, and idle until its first request's head is in."""
        self._address[connection] = address
        if address is not None:
            self._by_address[address] += 1
        self._idle[connection] = None

    def busy(self, connection: _Connection) -> None:
        """C{connection} has a request in progress: it is not closed for a newcomer."""
        self._idle.pop(connection, None)

    def idle(self, connection: _Connection) -> None:
        """C{connection} finished its request and waits for the next one."""
        if connection in self._address and connection not in self._evicting:
            self._idle.pop(connection, None)
            self._idle[connection] = None

    def closed(self, connection: _Connection) -> None:
        address = self._address.pop(connection, None)
        if address is not None:
            self._by_address[address] -= 1
            if not self._by_address[address]:
                del self._by_address[address]
        self._idle.pop(connection, None)
        self._evicting.discard(connection)
