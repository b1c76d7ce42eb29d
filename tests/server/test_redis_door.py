"""The Redis door as the real `redis` client package sees it: handshake (RESP2 and RESP3),
AUTH with cas tokens and their scopes, reads from the configured ref and env only, BLAKE3
checks, batched commits that name the writing token, and refused history rewrites."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from servers import CasServer

from cas import manifest, revocations
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.history import commit_changes
from cas.objects import Entry, EntryKey
from cas.refs import load_commit, resolve
from cas.server.auth import Scope, add_token
from cas.store import Store
from server.rediskit import ENV_A, FX_KEY, Door, seed, start, wait_until, wire


@pytest.fixture
def door(tmp_path: Path) -> Iterator[Door]:
    with start(tmp_path) as d:
        yield d


@pytest.fixture(scope="module")
def shared_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    """One door for the tests that only read or are refused: none of them commits."""
    with start(tmp_path_factory.mktemp("shared-door")) as d:
        yield d


def _main_tip(path: Path) -> ObjectId:
    with Store(path) as s:
        return resolve(s, "main")


def _wait_commit(path: Path, old: ObjectId) -> ObjectId:
    return wait_until(lambda: (tip if (tip := _main_tip(path)) != old else None), "committed to main")


@pytest.mark.parametrize("protocol", [2, 3])
def test_handshake_and_reads_serve_only_the_configured_env(shared_door: Door, protocol: int) -> None:
    c = shared_door.client(shared_door.read, protocol)
    assert c.ping() is True
    got = json.loads(c.get(FX_KEY))
    assert base64.b64decode(got["data"]) == b"graph for A"
    assert c.get("pt2:fx-graph-v1::absent:c1") is None
    assert c.mget([FX_KEY, "pt2:fx-graph-v1::absent:c1"])[1] is None
    assert c.exists(FX_KEY, "pt2:fx-graph-v1::absent:c1") == 1


def test_auth_is_a_cas_token_and_scopes_apply(shared_door: Door) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        shared_door.client(None).get(FX_KEY)
    with pytest.raises(redis.exceptions.AuthenticationError):
        shared_door.client("cas_not-a-token").get(FX_KEY)
    with pytest.raises(redis.exceptions.NoPermissionError):
        shared_door.client(shared_door.read).set("pt2:fx-graph-v1::new:c1", wire(b"x"))
    # That the refused write is never committed is checked where a commit is the barrier:
    # test_writes_are_committed_in_a_batch_naming_the_token.


def test_writes_are_committed_in_a_batch_naming_the_token(door: Door) -> None:
    before = _main_tip(door.store)
    with pytest.raises(redis.exceptions.NoPermissionError):  # a read token's write: refused
        door.client(door.read).set("pt2:fx-graph-v1::refused:c1", wire(b"x"))
    w = door.client(door.write)
    # One pipeline: the four writes arrive in one packet, so no timed flush falls between
    # them and they land in one commit.
    p = w.pipeline(transaction=False)
    p.set("pt2:fx-graph-v1::k1:c1", wire(b"one", 120))
    p.set("pt2:autograd-experimental::k2:c1", wire(b"two", 30))
    p.set("triton:kernelhash:k.cubin", b"\x7fELF...")  # Triton's put; its get is MGET
    p.mset({"inductor:oldhash:k.json": b"{}"})  # the key shape of older Tritons
    assert p.execute() == [True, True, True, True]
    # Served at once, before the commit lands.
    assert base64.b64decode(json.loads(w.get("pt2:fx-graph-v1::k1:c1"))["data"]) == b"one"
    tip = _wait_commit(door.store, before)
    with Store(door.store) as s:
        commit = load_commit(s, tip)
        assert commit.metadata["token"] == "w"
        assert commit.metadata["producer"] == "redis"
        assert commit.parents == (before,)
        got = {(k.env, k.kind, k.key) for k, _ in manifest.entries(s, commit.manifest)}
    assert {
        (ENV_A.id, "inductor", "k1"),
        (ENV_A.id, "aot_autograd", "k2"),
        (ENV_A.id, "triton_remote", "kernelhash/k.cubin"),
        (ENV_A.id, "triton_remote", "oldhash/k.json"),
    } <= got
    # The refused write, made before the permitted ones, is in no commit.
    assert not any(key == "refused" for _, _, key in got)
    # A fresh connection reads them back from the branch.
    assert door.client(door.read, 2).mget(["triton:kernelhash:k.cubin", "triton:kernelhash:k.json"]) == [
        b"\x7fELF...", None]


def test_history_rewrites_and_foreign_keys_are_refused(shared_door: Door) -> None:
    w = shared_door.client(shared_door.write)
    for call in (lambda: w.delete(FX_KEY), lambda: w.flushall(), lambda: w.set("user:1", b"x")):
        with pytest.raises(redis.exceptions.ResponseError, match="cas"):
            call()
    assert w.get(FX_KEY) is not None


def _door_get(path: Path, tmp_path: Path, token: str) -> bytes | None:
    """FX_KEY read through a Redis door started on ``path``, as ``token``."""
    server = CasServer(path, tmp_path, "--redis-port", "0", "--redis-env", ENV_A.id.hex)
    try:
        got: bytes | None = redis.Redis(port=server.redis_port, password=token).get(FX_KEY)
        return got
    finally:
        server.stop()


def test_corrupt_blobs_are_not_served(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Store.init(path) as s:
        token = add_token("w", Scope.WRITE, store=s)
        s.objects.put_object(ENV_A)
        good = b"graph bytes" * 10
        blob = ObjectId.of(good)
        # A fault below the store's own checks: bytes stored under an id they do not hash to.
        s.objects.write([(blob, ObjType.BLOB, b"X" + good[1:])], verified=True)
        key = EntryKey(ENV_A.id, "inductor", "fgraphkey", "")
        commit_changes(s, "main", {key: Entry(blob, len(good), None, {})}, "seed")
    assert _door_get(path, tmp_path, token) is None


def test_refs_from_untrusted_remotes_are_not_served(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Store.init(path) as s:
        token = add_token("r", Scope.READ, store=s)
    seed(path, origin="stranger")
    assert _door_get(path, tmp_path, token) is None


def test_a_ref_with_several_envs_needs_redis_env(tmp_path: Path) -> None:
    path = tmp_path / "store"
    Store.init(path).close()
    seed(path)
    with pytest.raises(RuntimeError, match="cannot tell which env the Redis door serves: main holds 2 envs"):
        CasServer(path, tmp_path, "--no-auth", "--redis-port", "0")


def test_a_read_only_door_drops_writes_and_may_serve_anonymous_readers(tmp_path: Path) -> None:
    d = start(tmp_path, "--redis-read-only", "--redis-anonymous-read")
    try:
        before = _main_tip(d.store)
        anonymous = d.client(None, 2)
        assert anonymous.get(FX_KEY) is not None
        assert anonymous.set("pt2:fx-graph-v1::new:c1", wire(b"x")) is True  # dropped quietly
        assert d.client(d.read).set("pt2:fx-graph-v1::new:c1", wire(b"x")) is True
        assert anonymous.get("pt2:fx-graph-v1::new:c1") is None
    finally:
        d.server.stop()  # a door commits what it holds as it stops: the barrier
    assert _main_tip(d.store) == before


def test_pipelined_and_inline_commands(shared_door: Door) -> None:
    pipe = shared_door.client(shared_door.read).pipeline(transaction=False)
    pipe.get(FX_KEY).get("pt2:fx-graph-v1::absent:c1").ping()
    got = pipe.execute()
    assert got[0] is not None and got[1] is None and got[2] is True
    with socket.create_connection(("127.0.0.1", shared_door.port)) as s:
        s.sendall(b"PING\r\nECHO hi\r\nGET x\r\n")
        answer = b""
        while answer.count(b"\r\n") < 3:
            answer += s.recv(4096)
    assert answer == b"+PONG\r\n$2\r\nhi\r\n-NOAUTH Authentication required.\r\n"


def test_writes_pending_at_shutdown_are_committed(tmp_path: Path) -> None:
    d = start(tmp_path, "--redis-flush-every", "600")
    before = _main_tip(d.store)
    try:
        d.client(d.write).set("pt2:fx-graph-v1::late:c1", wire(b"late"))
    finally:
        d.server.stop()  # SIGINT: uvicorn's shutdown runs the door's last commit
    with Store(d.store) as s:
        tip = resolve(s, "main")
        assert tip != before
        keys = {k.key for k, _ in manifest.entries(s, load_commit(s, tip).manifest)}
    assert "late" in keys


def test_a_commit_from_an_untrusted_remote_on_the_served_branch_stops_serving(door: Door) -> None:
    c = door.client(door.read)
    assert c.get(FX_KEY) is not None  # main is local: served
    with Store(door.store) as s:
        data = b"from elsewhere"
        key = EntryKey(ENV_A.id, "inductor", "strangerkey", "")
        oid = commit_changes(s, "main", {key: Entry(s.objects.put(data), len(data), None, {})}, "pulled")
        s.meta.set(f"origin.{oid.hex}", "remote:stranger")  # as a pull from it records
    assert c.get("pt2:fx-graph-v1::strangerkey:c1") is None
    assert c.get(FX_KEY) is None  # the whole ref is refused, not just the new commit


def test_anonymous_writes_need_a_door_that_records(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--redis-anonymous-write and --redis-read-only contradict"):
        start(tmp_path, "--redis-read-only", "--redis-anonymous-write")


def test_a_stranger_cannot_make_the_door_buffer_more_than_64_kib(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Store.init(path) as s:
        add_token("w", Scope.WRITE, store=s)
    seed(path)
    server = CasServer(path, tmp_path, "--redis-port", "0", "--redis-env", ENV_A.id.hex)
    try:
        with socket.create_connection(("127.0.0.1", server.redis_port), timeout=30) as sock:
            # One SET announcing 100 MB, never authenticated: refused at 64 KiB, not read on.
            sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000000\r\n")
            reply = b""
            try:
                for _ in range(64):
                    sock.sendall(b"x" * 4096)
                while chunk := sock.recv(4096):
                    reply += chunk
            except (BrokenPipeError, ConnectionResetError):
                pass
        assert b"more than 65536 bytes before AUTH" in reply, reply
    finally:
        server.stop()


def test_miss_reports_say_what_stock_clients_missed(tmp_path: Path) -> None:
    """--redis-report-misses: the door commits what its readers hit and missed against
    the pin it served, every interval and at shutdown; `cas coverage` of that pin sums it."""
    import platform

    from cas import coverage

    def reports(path: Path) -> dict:
        with Store(path) as s:
            return coverage.coverage(s, "main").misses.to_dict()

    with start(tmp_path, "--redis-report-misses", "1") as d:
        c = d.client(d.read)
        assert c.get(FX_KEY) is not None
        assert c.get("pt2:fx-graph-v1::fmissing1:c1") is None
        wait_until(lambda: reports(d.store)["lookups"].get("inductor", {}).get("misses") or None,
                   "committed a miss report")
        assert c.get("pt2:fx-graph-v1::fmissing2:c1") is None  # reported at shutdown at the latest
    got = reports(d.store)
    # Two reports at least (the tick may split the first two GETs), and nothing counted twice.
    assert got["reports"] >= 2 and got["hosts"] == [f"{platform.node()} redis door"]
    assert got["envs"] == [ENV_A.id.hex]
    assert got["lookups"] == {"inductor": {"hits": 1, "misses": 2}}
    assert {(m["kind"], m["key"]) for m in got["missed"]} == {("inductor", "fmissing1"), ("inductor", "fmissing2")}
    with Store(d.store) as s:
        assert coverage.report_branch(f"{platform.node()} redis door") in {
            n.removeprefix("refs/heads/") for n in s.refs.as_dict("refs/heads/")}
def test_a_revoked_entry_is_nil_from_the_next_get(door: Door) -> None:
    """A revocation that reaches the served store (here written into it, as a push
    does) makes GET nil at once, even for a value the door has just served (hot)."""
    c = door.client(door.read)
    assert c.get(FX_KEY) is not None
    with Store(door.store) as s:
        revocations.revoke(s, revocations.find_targets(s, "fgraphkey"), "miscompiled on this CPU")
    assert c.get(FX_KEY) is None
    assert c.exists(FX_KEY) == 0
