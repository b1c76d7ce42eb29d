"""The HTTP door's connections, on a real `cas serve`: a connection that sends nothing, or
stops half-way through a request head, is closed after the idle timeout; one past the
cap, from one address or in all, is answered 503 and closed; health still answers from
another address while many idle connections are held open."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import Served, connect_from


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("capped"), "--idle-timeout", "2", "--max-connections-per-peer", "4")
    try:
        yield s
    finally:
        s.stop()




def _until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (the test's barrier)."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def _health(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(65536)


@pytest.mark.parametrize("sent", [b"", b"GET /v1/health HTTP/1.1\r\nHost: x\r\n"])
def test_a_silent_connection_is_closed_after_the_idle_timeout(capped: Served, sent: bytes) -> None:
    with connect_from("127.0.0.1", capped.server.port) as sock:
        sock.sendall(sent)
        assert _until_closed(sock) == b""  # closed without an answer


def test_connections_past_the_per_peer_cap_are_refused_and_health_still_answers(capped: Served) -> None:
    port = capped.server.port
    held = [connect_from("127.0.0.2", port) for _ in range(4)]
    try:
        refused = [connect_from("127.0.0.2", port) for _ in range(50)]
        for sock in refused:
            with sock:
                answer = _until_closed(sock)
                assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"max number of clients from 127.0.0.2 reached (4)" in answer
        assert httpx.get(f"{capped.url}/v1/health").status_code == 200  # another address
        assert all(_health(s).startswith(b"HTTP/1.1 200 ") for s in held)  # the held ones work
    finally:
        for s in held:
            s.close()


def test_connections_past_the_door_cap_are_refused(tmp_path: Path) -> None:
    capped = Served(tmp_path, "--max-connections-per-peer", "4", "--max-connections", "8")
    port = capped.server.port
    held = [connect_from(f"127.0.0.{3 + i // 4}", port) for i in range(8)]  # 4 each from two addresses
    try:
        assert all(_health(s).startswith(b"HTTP/1.1 200 ") for s in held)
        with connect_from("127.0.0.9", port) as extra:
            assert b"max number of clients reached (8)" in _until_closed(extra)
    finally:
        for s in held:
            s.close()
        capped.stop()


def test_the_caps_must_fit_the_file_limit(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the connection caps allow 100000000 connections, but this process may"):
        Served(tmp_path, "--max-connections", "100000000")
