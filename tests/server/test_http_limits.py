"""HTTP limits and the access log, on a real `cas serve`: oversized request heads and too
many headers get 431 without being read whole; every request is one printable log line;
secrets in query parameters never reach the log."""

from __future__ import annotations

import http.client
import os
import socket
import time
import uuid
from urllib.parse import urlsplit

import httpx
from bombs import HEADROOM, LIMIT, peak_rss
from servers import Served

from cas.server.protocol import MAX_HEAD, MAX_HEADERS


def _connect(s: Served) -> socket.socket:
    u = urlsplit(s.url)
    return socket.create_connection((u.hostname, u.port), timeout=30)


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def test_a_large_request_head_gets_431(small: Served) -> None:
    with _connect(small) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n")
        assert _status(sock) == 431


def test_too_many_headers_get_431(small: Served) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    with _connect(small) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert _status(sock) == 431


def test_an_endless_header_is_cut_off_in_bounded_memory(small: Served) -> None:
    sent = 0
    with _connect(small) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            while sent < 256 << 20:
                sock.sendall(b"a" * (1 << 20))
                sent += 1 << 20
        except OSError:  # the server answered 431 and closed: our writes fail
            pass
    assert sent < 64 << 20
    assert peak_rss(small.server.proc.pid) < LIMIT + HEADROOM
    assert httpx.get(f"{small.url}/v1/health").status_code == 200  # still serving


def test_a_body_cut_into_tiny_and_large_pieces_is_read_whole(small: Served) -> None:
    # A request body arrives as the peer cut it: tiny chunks (a trickle) are gathered as
    # they come, large ones kept as they are; either way the server reads the same bytes.
    ids = os.urandom(32 * 4000)  # ids nobody stored: /v1/missing answers all of them
    pieces = [ids[i : i + 3] for i in range(0, 3000, 3)] + [ids[3000:80_000]]
    pieces += [ids[i : i + 7] for i in range(80_000, len(ids), 7)]
    u = urlsplit(small.url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=60)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece its own segment
    conn.request("POST", "/v1/missing", body=iter(pieces), encode_chunked=True,
                 headers={"Authorization": f"Bearer {small.read_token}"})
    answer = conn.getresponse()
    assert answer.status == 200 and answer.read() == ids
    conn.close()


def test_a_normal_request_with_headers_is_served(small: Served) -> None:
    headers = {f"X-H{i}": "v" * 100 for i in range(50)}
    assert httpx.get(f"{small.url}/v1/health", headers=headers).status_code == 200


def _log_after(s: Served, marker: str, count: int) -> list[str]:
    """The access-log lines after the one naming ``marker``, once there are ``count`` (a
    line is written as its response goes out, so the log is polled, not read once)."""
    deadline = time.monotonic() + 30
    while True:
        lines = s.server.access_log.read_text(encoding="ascii").splitlines()
        at = [i for i, line in enumerate(lines) if marker in line]
        after = lines[at[-1] + 1:] if at else []
        if (at and len(after) >= count) or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def test_one_request_is_one_printable_log_line_without_secrets(small: Served) -> None:
    marker = uuid.uuid4().hex  # the lines of this test are those after this request's
    httpx.get(f"{small.url}/v1/refs", params={"prefix": marker}, headers={"Authorization": f"Bearer {small.read_token}"})
    _log_after(small, marker, 0)
    auth = {"Authorization": f"Bearer {small.read_token}"}
    httpx.get(f"{small.url}/v1/refs%0A127.0.0.1 - \"GET /forged\" 200%00", headers=auth)
    httpx.get(f"{small.url}/v1/refs", params={"prefix": "refs/", "access_token": small.write_token,
                                               "token": small.read_token}, headers=auth)
    httpx.get(f"{small.url}/v1/refs/{small.write_token}", headers=auth)  # a token in the path
    with _connect(small) as sock:  # invalid UTF-8 and controls, as no client library sends them
        sock.sendall(b"GET /v1/%ff%fe%01%0d%0a?x=%ff%0a HTTP/1.1\r\nHost: x\r\n\r\n")
        _status(sock)
    lines = _log_after(small, marker, 4)
    assert len(lines) == 4, lines
    assert all(line.isprintable() and line.isascii() for line in lines)
    assert "forged" in lines[0] and "%0A" in lines[0]
    assert "prefix=refs" in lines[1] and "access_token=REDACTED" in lines[1]
    text = "\n".join(lines)
    assert small.write_token not in text and small.read_token not in text
