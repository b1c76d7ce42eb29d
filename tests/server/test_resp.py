"""The RESP parser (cas.server.resp.Parser): commands come out the same however the bytes
are split, each byte is examined a bounded number of times, a bulk string must end with
CRLF, and limits are checked at a header, before the bytes it declares arrive."""

from __future__ import annotations

import pytest

from cas.server.resp import MAX_LINE, Parser, ProtocolError


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def feed(parser: Parser, data: bytes, step: int) -> list[list[bytes]]:
    out = []
    for i in range(0, len(data), step):
        parser.feed(data[i:i + step])
        while (args := parser.next()) is not None:
            out.append(args)
    return out


def test_a_1_mb_command_trickled_a_byte_at_a_time_is_examined_once() -> None:
    keys = [b"k%06d" % i for i in range(20_000)]
    data = encode(b"MGET", *keys) + encode(b"SET", b"key", bytes(range(256)) * 4096) + b"PING\r\n"
    assert len(data) > 1 << 20
    parser = Parser()
    got = feed(parser, data, 1)
    assert got == [[b"MGET", *keys], [b"SET", b"key", bytes(range(256)) * 4096], [b"PING"]]
    # Each byte is looked at about once (a CR at the end of a packet twice), never once
    # per packet: re-parsing from the command's start would examine ~n^2/2 bytes.
    assert parser.examined <= 2 * len(data)
    assert parser.consumed == len(data) and parser.buffered == 0


@pytest.mark.parametrize("step", [1, 2, 3, 5, 64, 1 << 20])
def test_splitting_does_not_change_the_commands(step: int) -> None:
    data = encode(b"SET", b"k", b"a\r\nb") + b"PING\r\n" + encode() + b"ECHO  hi \r\n" + encode(b"GET", b"")
    assert feed(Parser(), data, step) == [[b"SET", b"k", b"a\r\nb"], [b"PING"], [], [b"ECHO", b"hi"], [b"GET", b""]]


def test_a_bulk_string_must_end_with_crlf() -> None:
    parser = Parser()
    parser.feed(b"*2\r\n$3\r\nGET\r\n$3\r\nabcXY")
    with pytest.raises(ProtocolError, match="must end with CRLF"):
        parser.next()


@pytest.mark.parametrize("bad", [b"*x\r\n", b"*2\r\n:1\r\n", b"*1\r\n$-1\r\n", b"*1\r\n$+3\r\n", b"*1\r\n$1_0\r\n",
                                 b"*1\r\n$ 3\r\n", b"*99999999\r\n"])
def test_what_is_not_resp_is_a_protocol_error(bad: bytes) -> None:
    parser = Parser()
    parser.feed(bad)
    with pytest.raises(ProtocolError):
        parser.next()


def test_limits_are_checked_at_the_header_before_the_bytes_arrive() -> None:
    parser = Parser(max_arg=100, max_command=150)
    parser.why = "with read scope"
    parser.feed(b"*2\r\n$3\r\nGET\r\n$101\r\n")
    with pytest.raises(ProtocolError, match="a string of 101 bytes: more than 100 bytes with read scope"):
        parser.next()
    parser = Parser(max_arg=100, max_command=150)
    parser.feed(b"*3\r\n$3\r\nSET\r\n$100\r\n" + bytes(100) + b"\r\n$50\r\n")
    with pytest.raises(ProtocolError, match="a command of more than 150 bytes"):
        parser.next()


def test_a_line_without_crlf_is_refused_past_its_limit() -> None:
    parser = Parser()
    parser.feed(b"P" * MAX_LINE)
    assert parser.next() is None
    parser.feed(b"P")
    with pytest.raises(ProtocolError, match="line too long"):
        parser.next()


def test_size_counts_what_the_unfinished_command_declared() -> None:
    parser = Parser()
    parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nxx")
    assert parser.next() is None
    assert parser.size == 4 + 9 + 7 + 7 + 1000  # headers and strings so far, and the value declared
    parser.feed(bytes(998) + b"\r\n")
    assert parser.next() is not None and parser.size == 0


def test_a_whole_command_in_one_packet_is_held_to_the_same_limits() -> None:
    """The one-pass parse of a command that arrived whole (Parser._whole) refuses what the
    step-by-step parse refuses, with the same error."""
    for size, max_arg, max_command, match in ((101, 100, 1000, "a string of 101 bytes"),
                                              (140, 200, 150, "a command of more than 150")):
        parser = Parser(max_arg=max_arg, max_command=max_command)
        parser.feed(encode(b"SET", b"k", bytes(size)) + encode(b"PING"))
        with pytest.raises(ProtocolError, match=match):
            parser.next()
    parser = Parser(max_arg=101, max_command=150)
    parser.feed(encode(b"SET", b"k", bytes(101)) + encode(b"PING"))
    assert [parser.next(), parser.next(), parser.next()] == [[b"SET", b"k", bytes(101)], [b"PING"], None]
    assert parser.consumed == parser.examined == len(encode(b"SET", b"k", bytes(101)) + encode(b"PING"))
