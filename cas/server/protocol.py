"""uvicorn's httptools protocol with limits on a request's head (431 when passed), and
:func:`read_body`, which reads a body within a limit (413 when passed).

uvicorn enforces no limit on a request head when httptools parses it (its
``h11_max_incomplete_event_size`` applies to h11 alone): a 256 MiB header line was read
whole. This subclass counts the head as httptools parses it — the URL and each header
through the parser's callbacks, and the raw bytes received while the head is still
incomplete, which bounds what httptools buffers for one endless header — and answers
431 with the server's JSON error body, then closes the connection, as soon as the head
passes ``MAX_HEAD`` bytes or ``MAX_HEADERS`` headers. h11 was measured too: it enforces
a size (as a 400) but parses bodies in pure Python.

It also counts connections (:class:`cas.server.peers.Peers`, through
:func:`limited_protocol`): one past the door's cap, in all or from one peer address, is
answered 503 and closed at once (uvicorn's own ``limit_concurrency`` answers 503 only
once a request arrives, and keeps the idle socket open meanwhile). And a connection is
closed when silent for the idle timeout from the moment it opens, and while a request
head is incomplete: uvicorn arms its keep-alive timer only after a response, so a
connection that never sent a request was held for ever.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.requests import Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cas.errors import RequestTooLarge, TransientRemoteError
from cas.server.peers import ConnectionLimits, Peers, peer_of

#: Largest request head (request line and headers), in bytes.
MAX_HEAD = 64 << 10
#: Most headers in one request.
MAX_HEADERS = 100
ACCESS_LOG = logging.getLogger("cas.server.access")


class _HeadTooLarge(Exception):
    pass


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol refusing request heads over MAX_HEAD bytes or MAX_HEADERS headers."""

    _in_head = True
    _raw = 0  # bytes received since the current head began
    _head = 0  # bytes of URL and headers parsed so far
    _count = 0
    #: The door's connections; a subclass per server sets it (limited_protocol).
    peers: Peers | None = None
    _peer: str | None = None  # set once counted

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.peers is not None:
            peer = peer_of(transport.get_extra_info("peername"))
            refused = self.peers.admit(peer)
            if refused is not None:
                self._answer(503, "Service Unavailable", TransientRemoteError.__name__, refused)
                return
            self._peer = peer
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peers is not None and self._peer is not None:
            self.peers.leave(self._peer)
            self._peer = None
        super().connection_lost(exc)

    def _idle(self) -> None:
        """(Re)start the keep-alive timer while the connection waits for a request head."""
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        self._in_head, self._head, self._count = True, 0, 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        self._grow(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._raw = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._raw = True, 0  # a pipelined request's head may follow
        super().on_message_complete()

    def _grow(self, n: int) -> None:
        self._head += n
        if self._head > MAX_HEAD or self._count > MAX_HEADERS:
            raise _HeadTooLarge

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._raw += len(data)
        super().data_received(data)  # _HeadTooLarge from a callback ends in send_400_response
        if self._in_head and self._raw > MAX_HEAD and not self.transport.is_closing():
            self._refuse()
        elif self._in_head and self._raw and not self.transport.is_closing() and self._between_requests():
            self._idle()  # a head in pieces: silence between pieces counts

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _refuse(self) -> None:
        message = f"request head exceeds the server limit of {MAX_HEAD} bytes or {MAX_HEADERS} headers"
        self._answer(431, "Request Header Fields Too Large", RequestTooLarge.__name__, message)

    def _answer(self, status: int, reason: str, error: str, message: str) -> None:
        """Answer ``status`` with the server's JSON error body, log it, and close."""
        body = json.dumps({"error": error, "message": message}).encode()
        head = (
            b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())
            + b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        client = self.client[0] if self.client else "-"
        ACCESS_LOG.info('%s - "- -" %d %d 0.0ms', client, status, len(body))
        self.transport.write(head + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # A callback that raised _HeadTooLarge surfaces as a parser error: answer 431.
        if self._head > MAX_HEAD or self._count > MAX_HEADERS:
            self._refuse()
        else:
            super().send_400_response(msg)


def limited_protocol(limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for one server: its instances share one count of connections."""
    return type("ServerHttpProtocol", (LimitedHttpToolsProtocol,), {"peers": Peers(limits)})


__all__ = ["MAX_HEAD", "MAX_HEADERS", "LimitedHttpToolsProtocol", "limited_protocol"]


#: Body chunks under this size are gathered into one buffer as they arrive (read_body):
#: a trickle's pieces, not the 16-64 KiB reads of a peer that sends at speed.
_GATHER_BELOW = 4096


async def read_body(request: Request, limit: int) -> bytes:
    """A request's body, refused (RequestTooLarge: 413) as soon as it passes ``limit``
    bytes, from its Content-Length before anything is read when it declares one."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request of {declared} bytes exceeds the server limit of {limit}")
    parts: list[bytes] = []
    small = bytearray()  # a run of small chunks, gathered as they come (below)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request exceeds the server limit of {limit} bytes")
        # A peer that trickles its body arrives as many tiny chunks: kept one object each,
        # they would cost ~40 bytes of Python per byte. Small ones are gathered in place,
        # so a body costs about its size however it is cut; large ones are kept as they
        # are and joined once (one copy).
        if len(chunk) < _GATHER_BELOW:
            small += chunk
            continue
        if small:
            parts.append(bytes(small))
            small.clear()
        parts.append(chunk)
    if small:
        parts.append(bytes(small))
    return b"".join(parts)
