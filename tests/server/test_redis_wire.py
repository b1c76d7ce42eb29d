"""What one Redis connection may make the door hold and compute, on a real `cas serve`:
a trickled command costs work in proportion to its bytes; a connection that may not send
values is refused a large argument at its header; write values are held within the
door's byte budget (writers wait, nothing is refused); replies a client does not read
are not piled up; a bulk string must end with CRLF; silent connections are closed, and
one past the per-peer cap is refused."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from bombs import peak_rss
from servers import CasServer, connect_from

from cas.server.redis_door import RedisDoor, RedisOptions
from cas.server.redis_session import Connection
from cas.store import Store
from server.rediskit import ENV_A, FX_KEY, Door, seed, start

MiB = 1 << 20


def _recv_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the test's barrier)."""
    got = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            got += chunk
    except ConnectionResetError:
        pass
    return bytes(got)


def _rss(pid: int) -> int:
    return peak_rss(pid, "VmRSS")


# -- work per byte -------------------------------------------------------------------------


class _Wire(asyncio.Transport):
    """The socket end of a Connection driven in-process: records what the door writes."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False


def _lines_run(packets: list[bytes], door: RedisDoor) -> tuple[int, bytes]:
    """(lines of the door's connection code executed, reply) for ``packets`` fed in turn."""
    watched = {str(Path(m.__file__).resolve()) for m in (sys.modules["cas.server.redis_session"],
                                                            sys.modules["cas.server.resp"])}
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        count += event == "line"
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in watched else None

    async def run() -> bytes:
        wire = _Wire()
        conn = Connection(door)
        conn.connection_made(wire)
        sys.settrace(tracer)
        try:
            for p in packets:
                conn.data_received(p)
        finally:
            sys.settrace(None)
        return bytes(wire.sent)

    reply = asyncio.run(run())
    return count, reply


def test_a_trickled_command_costs_work_in_proportion_to_its_bytes(tmp_path: Path) -> None:
    """An MGET of 400 keys sent 2 bytes a packet: the door's connection code runs a
    bounded number of lines per packet and per argument (0.28 million here). Re-parsing
    the unfinished command from its start on every packet ran 15.6 million, 23 times the
    bound, and quadratic in the command's size."""
    path = tmp_path / "store"
    with Store.init(path) as s:
        s.objects.put_object(ENV_A)
    seed(path)
    door = RedisDoor(path, None, RedisOptions(port=0, env=ENV_A.id.hex))
    keys = [b"pt2:fx-graph-v1::k%04d:c1" % i for i in range(400)]
    data = b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1) + b"".join(b"$%d\r\n%s\r\n" % (len(k), k) for k in keys)
    packets = [data[i:i + 2] for i in range(0, len(data), 2)]
    try:
        lines, reply = _lines_run(packets, door)
    finally:
        door.store.close()
    assert reply == b"*400\r\n" + b"$-1\r\n" * 400  # every key answered (a miss), once
    assert lines < 100 * (len(packets) + len(keys)), lines


# -- what a connection may send --------------------------------------------------------------


@pytest.fixture(scope="module")
def anonymous_read(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with start(tmp_path_factory.mktemp("wire"), "--redis-anonymous-read") as d:
        yield d


def _send(door: Door, data: bytes, *, token: str | None = None, then: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", door.port), timeout=60) as sock:
        if token:
            sock.sendall(b"AUTH %s\r\n" % token.encode())
        sock.sendall(data)
        try:
            sock.sendall(then)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _recv_all(sock)


def test_a_bulk_string_not_ended_by_crlf_closes_the_connection(anonymous_read: Door) -> None:
    got = _send(anonymous_read, b"*2\r\n$3\r\nGET\r\n$3\r\nabcXY\r\n")
    assert got == b"-ERR protocol error: a bulk string must end with CRLF\r\n"  # then closed


@pytest.mark.parametrize("who", ["anonymous", "read token"])
def test_a_read_scope_connection_is_refused_a_large_argument_at_its_header(anonymous_read: Door, who: str) -> None:
    token = anonymous_read.read if who == "read token" else None
    key = b"k" * (100 << 10)
    got = _send(anonymous_read, b"*2\r\n$3\r\nGET\r\n$%d\r\n" % len(key), token=token, then=key + b"\r\nPING\r\n")
    assert got.endswith(b"-ERR protocol error: a string of 102400 bytes: more than 65536 bytes with read scope\r\n")
    assert b"PONG" not in got  # nothing after the refusal was answered
    assert anonymous_read.client(anonymous_read.read).get(FX_KEY) is not None  # the door serves on


def test_a_value_declared_past_the_limit_is_refused_before_it_is_read(anonymous_read: Door) -> None:
    """Three writers each declare a 1 GiB value and start sending it: each is refused at
    the header, and the server holds none of it."""
    pid = anonymous_read.server.proc.pid
    before = _rss(pid)
    answers = []

    def attack() -> None:
        answers.append(_send(anonymous_read, b"*3\r\n$3\r\nSET\r\n$11\r\ntriton:h:f1\r\n$1073741824\r\n",
                             token=anonymous_read.write, then=os.urandom(MiB)))

    threads = [threading.Thread(target=attack) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(b"a string of 1073741824 bytes: more than 134217728 bytes (the door's largest value, "
               b"--redis-max-value)" in a for a in answers), answers
    assert peak_rss(pid) - before < 32 * MiB


def test_writes_are_held_within_the_budget_and_writers_wait_for_room(tmp_path: Path) -> None:
    """Three writers each SET eight 8 MiB values (192 MiB) into a door that may hold 16
    MiB of values and would otherwise commit only every 600 s: every write succeeds, is
    committed and read back, and the server's memory grows by far less than 192 MiB."""
    with start(tmp_path, "--redis-max-value", "8M", "--redis-max-pending", "16M",
               "--redis-flush-every", "600") as door:
        pid = door.server.proc.pid
        before = _rss(pid)
        values = {f"triton:w{w}:v{i}": os.urandom(8 * MiB - 64) for w in range(3) for i in range(8)}

        def write(w: int) -> None:
            c = door.client(door.write)
            for key, value in values.items():
                if key.startswith(f"triton:w{w}:"):
                    assert c.set(key, value) is True

        threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        grown = peak_rss(pid) - before
        reader = door.client(door.read)
        for key in ("triton:w0:v0", "triton:w1:v7", "triton:w2:v3"):
            assert reader.get(key) == values[key]
    assert grown < 96 * MiB, f"{grown >> 20} MiB"


def test_replies_a_client_does_not_read_are_not_piled_up(anonymous_read: Door) -> None:
    """300 pipelined GETs of a 1 MiB value, the replies read only once all are sent: the
    door stops answering (and reading) while the client's socket is full."""
    value = os.urandom(MiB)
    anonymous_read.client(anonymous_read.write).set("triton:big:v", value)
    pid = anonymous_read.server.proc.pid
    before = _rss(pid)
    with socket.create_connection(("127.0.0.1", anonymous_read.port), timeout=60) as sock:
        sock.sendall(b"GET triton:big:v\r\n" * 300 + b"QUIT\r\n")
        got = _recv_all(sock)
    assert got.count(value) == 300 and got.endswith(b"+OK\r\n")
    assert peak_rss(pid) - before < 64 * MiB


# -- connections -------------------------------------------------------------------------------




def _ask(sock: socket.socket, command: bytes) -> bytes:
    sock.sendall(command)
    return sock.recv(4096)


def test_silent_connections_are_closed_and_clients_reconnect(tmp_path: Path) -> None:
    with start(tmp_path, "--redis-idle-timeout", "1") as door:
        client = door.client(door.read)
        assert client.get(FX_KEY) is not None
        with socket.create_connection(("127.0.0.1", door.port), timeout=60) as silent:
            assert _recv_all(silent) == b""  # closed by the door, after a second of silence
        # The client's pooled connection, silent longer, was closed too: redis-py reconnects.
        assert client.get(FX_KEY) is not None


def test_a_connection_past_the_per_peer_cap_is_refused(tmp_path: Path) -> None:
    with start(tmp_path, "--redis-max-connections-per-peer", "3") as door:
        held = [connect_from("127.0.0.2", door.port) for _ in range(3)]
        try:
            assert all(_ask(s, b"PING\r\n") == b"+PONG\r\n" for s in held)
            with connect_from("127.0.0.2", door.port) as extra:
                assert _recv_all(extra) == b"-ERR max number of clients from 127.0.0.2 reached (3)\r\n"
            assert door.client(door.read).get(FX_KEY) is not None  # another address is served
            held.pop().close()
            deadline = time.monotonic() + 30  # the door sees the close soon after
            while True:
                with connect_from("127.0.0.2", door.port) as again:
                    if _ask(again, b"PING\r\n") == b"+PONG\r\n" or time.monotonic() > deadline:
                        break
            assert _ask(held[0], b"PING\r\n") == b"+PONG\r\n"
        finally:
            for s in held:
                s.close()


def test_options_out_of_range_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    Store.init(path).close()
    seed(path)
    with pytest.raises(RuntimeError, match="--redis-max-value must be 1 byte to 512M, not 1G"):
        CasServer(path, tmp_path, "--no-auth", "--redis-port", "0", "--redis-env", ENV_A.id.hex,
                  "--redis-max-value", "1G")


def test_a_read_only_door_takes_large_values_from_any_client_and_drops_them(tmp_path: Path) -> None:
    """Triton's put carries kernel files well over 64 KiB: on a read-only door an
    anonymous client's SET of 1 MiB is answered OK (and dropped), not refused."""
    with start(tmp_path, "--redis-read-only", "--redis-anonymous-read") as door:
        anonymous = door.client(None, 2)
        assert anonymous.set("triton:h:kernel.cubin", os.urandom(MiB)) is True
        assert anonymous.get("triton:h:kernel.cubin") is None
