"""A hostile fake of `cas serve`, for the client side of invariant 8: a small Starlette
app under uvicorn on 127.0.0.1 (port 0, in a thread of the test process) that answers
the protocol with whatever a test sets: bombs, endless and trickling streams, wrong
JSON types, non-JSON, deep JSON, redirects, packs that repeat or add objects.

A fake only to inject faults: the client under test is the real `cas` CLI.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]
MiB = 1 << 20


class Hostile:
    """A server whose answer to each path (``/v1/refs``...) a test sets with :meth:`set`."""

    def __init__(self) -> None:
        self.answers: dict[str, Handler] = {}
        #: Bytes the streaming answers have handed to the server to send.
        self.sent = 0
        #: Requests answered per path since the last :meth:`set`.
        self.hits: dict[str, int] = {}
        app = Starlette(routes=[Route("/{path:path}", self._route, methods=["GET", "POST", "PUT"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the hostile server did not start")
            self._thread.join(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def set(self, **answers: Handler) -> str:
        """Answer ``/v1/<name>`` with each handler (``refs=...``, ``fetch=...``); the
        rest is 404. Returns the server's URL."""
        self.answers = {f"/v1/{name}": handler for name, handler in answers.items()}
        self.sent = 0
        self.hits = {}
        return self.url

    async def _route(self, request: Request) -> Response:
        handler = self.answers.get(request.url.path)
        self.hits[request.url.path] = self.hits.get(request.url.path, 0) + 1
        if handler is None:
            return JSONResponse({"error": "NotFound", "message": "nothing here"}, status_code=404)
        return await handler(request)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    # -- answers ---------------------------------------------------------------------

    def stream(self, chunks: Callable[[], Iterator[bytes]], status: int = 200) -> Handler:
        """An answer streamed from ``chunks()``, counted in :attr:`sent`."""

        async def body(request: Request) -> AsyncIterator[bytes]:
            for chunk in chunks():
                if await request.is_disconnected():
                    return  # the client stopped reading: so does the bomb
                self.sent += len(chunk)
                yield chunk

        async def handler(request: Request) -> Response:
            return StreamingResponse(body(request), status_code=status, media_type="application/json")

        return handler

    def trickle(self, head: bytes, every: float) -> Handler:
        """``head``, then one space (valid inside JSON) every ``every`` seconds, for ever."""

        async def body(request: Request) -> AsyncIterator[bytes]:
            yield head
            while not await request.is_disconnected():
                await asyncio.sleep(every)
                self.sent += 1
                yield b" "

        async def handler(request: Request) -> Response:
            return StreamingResponse(body(request), media_type="application/json")

        return handler


def fixed(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: Request) -> Response:
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    return handler


def huge(head: bytes, total: int) -> Callable[[], Iterator[bytes]]:
    """``head`` followed by spaces up to ``total`` bytes (no Content-Length)."""

    def chunks() -> Iterator[bytes]:
        yield head
        block = b" " * MiB
        for _ in range((total - len(head)) // MiB):
            yield block

    return chunks


class TricklingHead:
    """A raw TCP server that answers every connection with a status line and then its
    headers one byte every ``every`` seconds, for ever: what httpx's per-read timeouts
    never cut, since each read gets a byte in time. Uvicorn cannot be made to do this."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self._stop.wait(self._every):
                    conn.sendall(b"a")
            except OSError:
                return  # the client hung up: what a deadline does

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
