"""Fuzzing within a bounded budget (derandomized, so CI is reproducible): the pack
decoder, every object decoder, ref names, entry keys, the RESP parser, and a real `cas
serve`'s HTTP API and Redis door meet random and mutated input with a CasError, a
ProtocolError or a 4xx, never another exception, a 5xx or unbounded memory. A longer
soak: docs/robustness.md, "Fuzzing"."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bombs import HEADROOM, LIMIT, peak_rss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server.rediskit import Door, start
from servers import Served

from cas import entrykeys, pack, refs, validate
from cas.codec import STRUCTURED, ObjType, encode
from cas.digest import ObjectId
from cas.errors import BadEntryKey, CasError
from cas.objects import Commit, Env, ManifestNode, Tag
from cas.server.resp import Parser, ProtocolError, get_or_set
from cas.torch.kinds import path_for  # path_for is torch-free; hydrate writes what it names

#: Examples per property; CAS_FUZZ_EXAMPLES raises it for a soak (docs/robustness.md).
EXAMPLES = int(os.environ.get("CAS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    derandomize=True,
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _samples() -> list[tuple[ObjType, bytes]]:
    env = Env({"device": "cpu", "torch_version": "2.13.0"})
    leaf = ManifestNode.encode_leaf(0, [[env.id.raw, "inductor", "fkey", "", bytes(32), 3, None, {"t": 1.5}]])
    commit = Commit(ObjectId.of(leaf), (), "a@b", 1, "m", {"producer": "capture", "n": [1, 2]})
    tag = Tag(commit.id, ObjType.COMMIT, "v1", "a@b", 2, "release")
    return [(ObjType.ENV, env.encode()), (ObjType.NODE, leaf), (ObjType.COMMIT, commit.encode()),
            (ObjType.TAG, tag.encode()), (ObjType.BLOB, os.urandom(700) + bytes(3000))]


SAMPLES = _samples()
GOOD_PACK = pack.encode_bytes([(ObjectId.of(d), t, d) for t, d in SAMPLES])


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "cut":
            del data[at:]
    return bytes(data)


@FUZZ
@given(st.one_of(mutated(GOOD_PACK), st.binary(max_size=400)))
def test_the_pack_decoder_only_raises_cas_errors(data: bytes) -> None:
    try:
        objs = pack.decode_all(io.BytesIO(data))
    except CasError:
        return
    assert all(ObjectId.of(raw) == oid for oid, _, raw in objs)


@FUZZ
@given(st.sampled_from(SAMPLES).flatmap(lambda s: st.tuples(st.just(s[0]), mutated(s[1]))))
def test_object_decoders_only_raise_cas_errors(sample: tuple[ObjType, bytes]) -> None:
    otype, data = sample
    try:
        validate.check(otype, data)
    except CasError:
        return
    if otype in STRUCTURED:
        from cas.objects import decode_object

        decode_object(otype, data)  # what validates also decodes


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.sampled_from([ObjType.ENV, ObjType.COMMIT, ObjType.TAG, ObjType.NODE]), json_values)
def test_any_body_of_any_type_is_validated_without_crashing(otype: ObjType, body: object) -> None:
    try:
        data = encode(otype, body)
    except (TypeError, ValueError, OverflowError):
        return  # not encodable at all
    try:
        validate.check(otype, data)
    except CasError:
        pass


@FUZZ
@given(st.text(max_size=60) | st.sampled_from(["HEAD", "-x", "refs/heads/a..b", "refs/heads/a/./b"]))
def test_ref_names_are_checked_without_crashing(name: str) -> None:
    for check in (refs.check_name, refs.branch_ref, refs.tag_ref):
        try:
            full = check(name)
        except CasError:
            continue
        assert full.startswith("refs/") and ".." not in full and "\x00" not in full


@FUZZ
@given(st.sampled_from(sorted(entrykeys.GRAMMAR)), st.text(max_size=40) | st.from_regex(r"[a-z./]{1,12}", fullmatch=True))
def test_keys_the_grammar_admits_stay_inside_the_cache_dir(kind: str, key: str) -> None:
    if entrykeys.problem(kind, key) is not None:
        with pytest.raises(BadEntryKey):
            entrykeys.check(kind, key)
        return
    base = Path("/cache/dir")
    path = Path(os.path.normpath(base / path_for(kind, key, b"content")))
    assert path.is_relative_to(base), (kind, key, path)


# -- the HTTP API of a real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, httpx.Client]]:
    s = Served(tmp_path_factory.mktemp("fuzz"), "--max-request", "1M")
    client = httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.write_token}"}, timeout=30)
    try:
        yield s, client
    finally:
        client.close()
        s.stop()


header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 50))
@given(
    st.sampled_from(["POST /v1/packs", "POST /v1/missing", "POST /v1/fetch", "PUT /v1/refs/", "GET /v1/refs"]),
    st.one_of(mutated(GOOD_PACK), st.binary(max_size=300), json_values.map(lambda v: repr(v).encode())),
    st.text(max_size=30),
    st.dictionaries(st.sampled_from(["X-Cas-Pack-Level", "Content-Type", "X-Other"]), header_values, max_size=2),
)
def test_the_http_api_never_answers_5xx(
    api: tuple[Served, httpx.Client], endpoint: str, body: bytes, tail: str, headers: dict[str, str]
) -> None:
    served, client = api
    method, path = endpoint.split(" ")
    if path.endswith("/"):
        path += tail.replace("?", "%3F").replace("#", "%23") or "x"
    try:
        resp = client.request(method, path, content=body, headers=headers)
    except (httpx.InvalidURL, httpx.LocalProtocolError):  # what the client itself refuses to send
        return
    assert resp.status_code < 500, (endpoint, resp.status_code, resp.text)
    assert peak_rss(served.server.proc.pid) < LIMIT + HEADROOM


# -- RESP: the parser, and a real server's Redis door ----------------------------------------------


def resp(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


GOOD_RESP = (resp([b"HELLO", b"3", b"AUTH", b"default", b"cas_token"]) + resp([b"SET", b"triton:h:f", b"a\r\nb"])
             + b"PING\r\n" + resp([b"MGET", b"pt2:fx-graph-v1::k:c1", b""]) + resp([]))
args_lists = st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), max_size=5)


def parse_in(data: bytes, cuts: list[int], limit: int = 200) -> tuple[list[list[bytes]], str | None, int]:
    """(commands, the protocol error or None, bytes examined) for ``data`` fed in pieces
    of the sizes in ``cuts``, taken in turn, to a parser limited to ``limit`` bytes a
    command (and a third of it a string)."""
    parser, out, at, i = Parser(max_arg=limit // 3, max_command=limit), [], 0, 0
    try:
        while at < len(data):
            step = cuts[i % len(cuts)]
            parser.feed(data[at:at + step])
            at, i = at + step, i + 1
            while (args := parser.next()) is not None:
                out.append(args)
    except ProtocolError as exc:
        return out, str(exc), parser.examined
    return out, None, parser.examined


@FUZZ
@given(st.one_of(mutated(GOOD_RESP), st.binary(max_size=300), args_lists.map(lambda c: b"".join(map(resp, c)))),
       st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_the_resp_parser_reads_the_same_however_the_bytes_are_split(data: bytes, cuts: list[int]) -> None:
    whole = parse_in(data, [len(data) or 1])
    split = parse_in(data, cuts)
    assert split[:2] == whole[:2]  # same commands, same error (or none), only ProtocolErrors
    assert split[2] <= 2 * len(data)  # each byte examined about once, however it arrived


@FUZZ
@given(args_lists)
def test_the_resp_parser_gives_back_what_was_encoded(commands: list[list[bytes]]) -> None:
    got, error, _ = parse_in(b"".join(map(resp, commands)), [3], limit=1 << 20)
    assert (got, error) == (commands, None)


GET_SET = resp([b"GET", b"pt2:fx-graph-v1::k:c1"]) + resp([b"SET", b"triton:h:f", b"a\r\nb"])


@FUZZ
@given(st.one_of(mutated(GET_SET), mutated(resp([b"SET", b"k", bytes(70)])), st.binary(max_size=100),
                 args_lists.map(lambda c: b"".join(map(resp, c)))))
def test_the_door_s_one_packet_shortcut_reads_nothing_the_parser_would_not(data: bytes) -> None:
    # The door answers a packet that get_or_set reads without its Parser: it must take
    # exactly one GET or SET, with the Parser's limits, or leave the packet to the Parser.
    got = get_or_set(data, 200 // 3) if len(data) <= 200 else None  # as the door calls it
    commands, error, _ = parse_in(data, [len(data) or 1])
    if got is not None:
        assert (commands, error) == ([got], None)
        assert got[0] in (b"GET", b"SET") and len(got) == (2 if got[0] == b"GET" else 3)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    with start(tmp_path_factory.mktemp("fuzz-redis"), "--redis-anonymous-read") as d:
        yield d


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 50))
@given(st.one_of(mutated(GOOD_RESP), st.binary(max_size=300)))
def test_the_redis_door_survives_any_bytes(door: Door, data: bytes) -> None:
    """Each example on its own connection, half-closed after the bytes (the door then
    closes it too: the barrier); the door still answers a new one in bounded memory."""
    port = door.port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
    assert peak_rss(door.server.proc.pid) < LIMIT + HEADROOM
