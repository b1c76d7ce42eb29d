"""The listening socket of both doors (cas.server.run._listen): asyncio turns Nagle off
on every connection accepted from it, so an answer written as a head and a body goes
out at once, not after the client's delayed ACK (44 ms a request on loopback)."""

from __future__ import annotations

import asyncio
import socket

from cas.server.run import _listen


def test_connections_accepted_from_the_listening_socket_send_without_nagle() -> None:
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

    asyncio.run(main())
    assert seen == [1]
