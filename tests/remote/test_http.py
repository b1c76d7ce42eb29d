"""The contract suite bound to HttpRemote against a real `cas serve`, plus HTTP specifics."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import Served

from cas.digest import ObjectId
from cas.errors import AuthError, Forbidden, RefConflict, TransientRemoteError, UsageError
from cas.remote import open_remote
from cas.remote.http import HttpRemote, _StreamReader

from .contract import RemoteContract, blob, commit_objects, ids


class TestHttpRemote(RemoteContract):
    @pytest.fixture
    def remote(self, served: Served) -> Iterator[HttpRemote]:
        r = HttpRemote(served.url, token=served.write_token)
        yield r
        r.close()


def test_open_remote_gives_an_http_remote_with_its_token(served: Served) -> None:
    r = open_remote(served.url, token=served.read_token)
    assert isinstance(r, HttpRemote)
    assert r.list_refs() == {}
    r.close()


def test_unknown_option_is_a_usage_error(shared_served: Served) -> None:
    with pytest.raises(UsageError, match="endpoint"):
        HttpRemote(shared_served.url, endpoint="http://x")


def test_read_token_fetches_but_cannot_push(served: Served) -> None:
    writer = HttpRemote(served.url, token=served.write_token)
    reader = HttpRemote(served.url, token=served.read_token)
    objs = commit_objects("shared")
    writer.send_pack(objs)
    writer.update_ref("refs/heads/main", objs[-1][0], None)
    assert reader.list_refs() == {"refs/heads/main": objs[-1][0]}
    assert reader.fetch(ids(objs)) == objs
    with pytest.raises(Forbidden, match="lacks write scope"):
        reader.send_pack([blob(b"not allowed")])
    with pytest.raises(Forbidden, match="lacks write scope"):
        reader.update_ref("refs/heads/main", None, objs[-1][0])
    assert writer.missing([ObjectId.of(b"not allowed")]) == [ObjectId.of(b"not allowed")]
    assert writer.list_refs() == {"refs/heads/main": objs[-1][0]}
    writer.close()
    reader.close()


@pytest.mark.parametrize("token", [None, "cas_not-a-real-token"])
def test_missing_or_unknown_token_is_an_auth_error(shared_served: Served, token: str | None) -> None:
    r = HttpRemote(shared_served.url, token=token)
    with pytest.raises(AuthError, match="missing or unknown token") as info:
        r.list_refs()
    assert not isinstance(info.value, Forbidden)
    assert info.value.exit_code == 9
    r.close()


def test_conflict_reports_the_current_value(served: Served) -> None:
    r = HttpRemote(served.url, token=served.write_token)
    one, two = commit_objects("one"), commit_objects("two")
    r.send_pack(one + two)
    r.update_ref("refs/heads/main", one[-1][0], None)
    with pytest.raises(RefConflict) as info:
        r.update_ref("refs/heads/main", two[-1][0], None)
    assert info.value.actual == one[-1][0]  # type: ignore[attr-defined]
    assert "pull" in (info.value.hint or "")
    r.close()


def test_racing_pushers_one_lands_the_other_conflicts(served: Served) -> None:
    base = commit_objects("base")
    r = HttpRemote(served.url, token=served.write_token)
    r.send_pack(base)
    r.update_ref("refs/heads/main", base[-1][0], None)
    tips = [commit_objects(f"racer {i}", (base[-1][0],)) for i in range(6)]
    for t in tips:
        r.send_pack(t)
    outcomes: list[str] = []
    barrier = threading.Barrier(len(tips))

    def push(objs: list) -> None:
        c = HttpRemote(served.url, token=served.write_token)
        barrier.wait()
        try:
            c.update_ref("refs/heads/main", objs[-1][0], base[-1][0])
            outcomes.append("landed")
        except RefConflict:
            outcomes.append("conflict")
        finally:
            c.close()

    threads = [threading.Thread(target=push, args=(t,)) for t in tips]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["landed"]
    assert r.list_refs()["refs/heads/main"] in {t[-1][0] for t in tips}
    r.close()


def test_server_gone_is_transient(served: Served) -> None:
    r = HttpRemote(served.url, token=served.write_token, timeout=2)
    served.stop()
    with pytest.raises(TransientRemoteError) as info:
        r.list_refs()
    assert info.value.transient
    r.close()


def test_fetch_is_batched_into_few_requests(shared_served: Served) -> None:
    r = HttpRemote(shared_served.url, token=shared_served.write_token)
    objs = [blob(f"object {i}".encode() * 20) for i in range(2000)]
    r.send_pack(objs)
    sends = r.requests
    assert sends == 1  # 2000 small objects, one pack
    got = r.fetch(ids(objs))
    assert got == objs
    assert r.requests - sends == 1
    r.close()


def test_push_cut_mid_way_keeps_finished_packs_and_resumes(served: Served, tmp_path) -> None:
    """Kill the server after the first pack: what arrived stays; the retry sends the rest."""
    from servers import CasServer

    objs = [blob(os.urandom(3 << 20)) for _ in range(6)]  # two packs of three 3 MiB blobs
    r = HttpRemote(served.url, token=served.write_token, timeout=5)

    def objects_then_kill():
        for i, obj in enumerate(objs):
            if i == 3:  # packs are built lazily: the first one is on the server by now
                served.server.proc.kill()
            yield obj

    with pytest.raises(TransientRemoteError):
        r.send_pack(objects_then_kill())
    r.close()
    served.server.proc.wait()
    again = CasServer(served.store_path, tmp_path, scheme="http")
    try:
        r = HttpRemote(again.url, token=served.write_token)
        todo = r.missing(ids(objs))
        assert objs[0][0] not in todo and objs[1][0] not in todo
        assert set(todo) >= {o[0] for o in objs[4:]}
        sent = r.send_pack([o for o in objs if o[0] in set(todo)])
        assert sent <= len(todo) * ((3 << 20) + 200)
        assert r.missing(ids(objs)) == []
        assert r.fetch(ids(objs)) == objs
        r.close()
    finally:
        again.stop()


def test_pack_whose_object_lacks_its_references_is_refused(shared_served: Served) -> None:
    from cas.codec import ObjType
    from cas.errors import MalformedPack
    from cas.objects import Commit

    r = HttpRemote(shared_served.url, token=shared_served.write_token)
    c = Commit(ObjectId.of(b"no such manifest"), (), "t", 0, "orphan", {}).encode()
    orphan = (ObjectId.of(c), ObjType.COMMIT, c)
    with pytest.raises(MalformedPack, match="lacks"):
        r.send_pack([blob(b"fine"), orphan])
    assert r.missing([orphan[0], ObjectId.of(b"fine")]) == [orphan[0], ObjectId.of(b"fine")]
    r.close()


def test_compression_level_is_the_clients_choice(shared_served: Served) -> None:
    """Loopback defaults to raw packs (zstd only costs CPU there); level 1 shrinks them.

    Objects under the store's compression threshold (2 KiB) are stored raw, so the level
    decides how they travel; one stored compressed goes as its stored frame whatever the
    level (tests/sync/test_stored_frames_on_the_wire.py)."""
    text = [blob(b"kernel line %d\n" % i * 100) for i in range(20)]
    assert all(len(o[2]) < 2048 for o in text)
    raw_size = sum(len(o[2]) for o in text)
    auto = HttpRemote(shared_served.url, token=shared_served.write_token)
    assert auto.compress_level is None
    assert auto.send_pack(text) > raw_size
    zipped = HttpRemote(shared_served.url, token=shared_served.write_token, compress_level="1")
    zipped.fetch(ids(text))
    auto.fetch(ids(text))
    assert zipped.bytes_received < raw_size / 5 < raw_size < auto.bytes_received
    assert HttpRemote("https://cas.example.com").compress_level == 1
    with pytest.raises(UsageError, match="compress_level"):
        HttpRemote(shared_served.url, compress_level="fast")
    for r in (auto, zipped):
        r.close()


# -- end to end, as a user runs it ----------------------------------------------------------


def _cli(store, *args: str, env: dict[str, str], ok: bool = True):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "from cas_cli.main import main; main()", "--store", str(store), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert (proc.returncode == 0) == ok, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


def _commit(store_path, n: int) -> ObjectId:
    from cas import history
    from cas.objects import Entry, EntryKey, Env
    from cas.store import Store

    with Store.init(store_path) as store:
        env_id = store.objects.put_object(Env({"device": "cpu"}))
        arts = [os.urandom(2000) + b"k" * 3000 for _ in range(n)]
        ids_ = store.objects.write((0, a) for a in arts)  # type: ignore[misc]
        changes = {EntryKey(env_id, "inductor", f"key{i}"): Entry(oid, len(a))
                   for i, (oid, a) in enumerate(zip(ids_, arts, strict=True))}
        return history.commit_changes(store, "main", changes, "artifacts")


def test_cli_push_and_clone_over_http(served: Served, tmp_path) -> None:
    from cas.store import Store

    env = {**os.environ, "CAS_AUTHOR": "t@x", "PUSH_TOKEN": served.write_token}
    env.pop("CAS_DIR", None)
    tip = _commit(tmp_path / "src", 50)
    _cli(tmp_path / "src", "remote", "add", "origin", served.url, "-o", "token_env=PUSH_TOKEN", env=env)
    _cli(tmp_path / "src", "push", "origin", env=env)
    with Store(served.store_path) as remote_store:
        assert remote_store.refs.get("refs/heads/main") == tip
    again = _cli(tmp_path / "src", "--json", "push", "origin", env=env)
    assert '"up-to-date"' in again.stdout
    reader = {**env, "CAS_TOKEN": served.read_token}
    _cli(tmp_path / "dst", "clone", served.url, env=reader)
    with Store(tmp_path / "dst") as dst:
        assert dst.refs.get("refs/heads/main") == tip
    denied = _cli(tmp_path / "dst", "push", "origin", "main:refs/heads/other", env=reader, ok=False)
    assert denied.returncode == 9 and "lacks write scope" in denied.stderr
    assert "Traceback" not in denied.stderr


def test_concurrent_uploads_and_fetches_all_land_intact(shared_served: Served) -> None:
    """Several clients at once: the server's per-thread store handles keep bytes intact."""
    groups = [[blob(os.urandom(500) + b"t%d-%d " % (g, i) * 300) for i in range(100)] for g in range(4)]
    errors: list[BaseException] = []

    def work(objs: list) -> None:
        c = HttpRemote(shared_served.url, token=shared_served.write_token, compress_level=3)
        try:
            c.send_pack(objs)
            assert c.fetch(ids(objs)) == objs
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=work, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    r = HttpRemote(shared_served.url, token=shared_served.read_token)
    assert r.missing([o[0] for g in groups for o in g]) == []
    r.close()


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    body=st.binary(max_size=12_000),  # chunks below and above GATHER_BELOW (4 KiB)
    cuts=st.lists(st.integers(0, 12_000), max_size=12),
    reads=st.lists(st.integers(-1, 3000), max_size=30),
)
def test_the_fetch_stream_reader_gives_the_bytes_in_order_however_they_are_cut(
    body: bytes, cuts: list[int], reads: list[int]
) -> None:
    # The answer to a fetch arrives in chunks of any size (small ones gathered as they
    # come); a pack decoder reads it in pieces of any size: what it reads is the body, in
    # order, and nothing more.
    edges = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    reader = _StreamReader(iter([body[a:b] for a, b in itertools.pairwise(edges)]))
    got = b"".join(reader.read(n) for n in reads) + reader.read()
    assert got == body
    assert reader.consumed == len(body)
    assert reader.read(5) == b""
