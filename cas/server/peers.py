"""Connection accounting for the server's doors: how many connections a door holds, in
all and per peer address, and how long one may stay silent.

Every open connection costs a file descriptor and some memory, idle or not. Without caps,
a stranger that opens connections and sends nothing (1,100 of them) used up the process's
descriptors, and health checks could no longer connect. Each door (HTTP, Redis) counts
its own connections here, refuses one past either cap at once, and closes a connection
silent for its idle timeout (cas.server.protocol, cas.server.redis_session).
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cas.errors import UsageError

#: Descriptors the process keeps beyond its connections: the store, logs, listeners, the
#: Redis door's commit pipes and report store, and a margin for a health check.
SPARE_FILES = 128


@dataclass(frozen=True)
class ConnectionLimits:
    """The caps of one door (its CLI options in docs/server.md)."""

    #: Connections open at once on the door.
    max_connections: int = 1000
    #: Connections open at once from one peer address.
    max_per_peer: int = 100
    #: Seconds a connection may stay silent (no request, no command) before it is closed.
    idle_timeout: int = 30


class Peers:
    """The connections open on one door, in all and per peer address."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self._per_peer: Counter[str] = Counter()

    def admit(self, peer: str) -> str | None:
        """Count a new connection from ``peer``; or, past a cap, say why it is refused
        (and count nothing)."""
        if self.total >= self.limits.max_connections:
            return f"max number of clients reached ({self.limits.max_connections})"
        if self._per_peer[peer] >= self.limits.max_per_peer:
            return f"max number of clients from {peer} reached ({self.limits.max_per_peer})"
        self.total += 1
        self._per_peer[peer] += 1
        return None

    def leave(self, peer: str) -> None:
        self.total -= 1
        self._per_peer[peer] -= 1
        if not self._per_peer[peer]:
            del self._per_peer[peer]


def peer_of(peername: Any) -> str:
    """The address part of a transport's ``peername`` ('' for a Unix socket)."""
    return str(peername[0]) if isinstance(peername, tuple) and peername else ""


def ensure_files(connections: int) -> None:
    """Let the process open ``connections`` sockets plus SPARE_FILES, raising its soft
    descriptor limit up to the hard one if needed: caps above what the process may open
    would not protect it (accept fails for everyone, health checks included)."""
    need = connections + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise UsageError(
                f"the connection caps allow {connections} connections, but this process may open "
                f"only {hard} files",
                hint="lower --max-connections / --redis-max-connections, or raise the hard limit (ulimit -Hn)",
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
