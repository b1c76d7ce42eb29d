"""The listening socket of both doors (cas.server.run._listen): asyncio (and uvloop, the
default loop) turn Nagle off on every connection accepted from it, so an answer written as a head and a body goes
out at once, not after the client's delayed ACK (44 ms a request on loopback)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop

from cas.server.run import _listen


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_connections_accepted_from_the_listening_socket_send_without_nagle(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    sock = _listen("127.0.0.1", 0, "--port")
    seen: list[int] = []

    async def main() -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            assert await reader.read() == b""  # the server closed it: it was accepted
            writer.close()

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen == [1]
