"""
Listeners get a deep accept queue unless their endpoint string sets one:
Twisted's default of 50 turned a burst of 256 clients into seconds of
waiting (the bench's scale curve).
"""

from __future__ import annotations

import pytest

from ocicache._daemon._listening import LISTEN_BACKLOG, with_backlog


@pytest.mark.parametrize("description", [
    "tcp:5000:interface=127.0.0.1",
    "tcp6:5000:interface=\\:\\:1",
    "ssl:5443:privateKey=k.pem:certKey=c.pem",
])
def test_tcp_and_tls_listeners_get_the_backlog(description: str) -> None:
    assert with_backlog(description) == f"{description}:backlog={LISTEN_BACKLOG}"


@pytest.mark.parametrize("description", [
    "tcp:5000:backlog=10",
    "systemd:domain=INET:index=0",
    "unix:/run/ocicache.sock",
])
def test_others_are_left_alone(description: str) -> None:
    assert with_backlog(description) == description
