"""A total deadline per HTTP request (invariant 8: clients have deadlines).

httpx's timeouts bound each socket read, so a server sending one byte every few
seconds keeps a request alive forever. A :class:`Watchdog` arms a timer per request;
when it fires it shuts down every socket its client opened (learnt through httpcore's
``trace`` extension, the one public hook that hands out the connection), which wakes
the blocked read; the request then fails and :meth:`Watchdog.expired` tells the caller
that the deadline, not the network, ended it. Shutting down all of the client's sockets
also ends a parallel request of the same transfer, which the deadline ends anyway.

Rejected: reading in a worker thread and abandoning it (the socket and the thread live
on), and re-arming the read timeout per chunk (it cannot bound the response headers).
"""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Watchdog:
    """The sockets of one httpx client, and a timer per request that shuts them down."""

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: keep the socket of every new connection (plain or TLS)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sock = info["return_value"].get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with self._lock:
                    self._sockets.add(sock)

    @contextmanager
    def armed(self, seconds: float) -> Iterator[threading.Event]:
        """Run the body under a deadline; the event is set if the deadline fired."""
        fired = threading.Event()
        timer = threading.Timer(seconds, self._expire, args=(fired,))
        timer.daemon = True
        timer.start()
        try:
            yield fired
        finally:
            timer.cancel()

    def _expire(self, fired: threading.Event) -> None:
        fired.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing to wake
