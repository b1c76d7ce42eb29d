"""The LMDB store: objects, chunking, compression, refs, reflog, staging, map growth."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import pytest
from testclock import Clock

from cas import store as store_mod
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import (
    AmbiguousId,
    FormatVersionError,
    ObjectNotFound,
    RefConflict,
    StoreNotFound,
)
from cas.objects import Commit, ManifestNode
from cas.store import Store, writes, wtlog


def commit_in(store: Store, message: str = "m", parents: tuple[ObjectId, ...] = ()) -> ObjectId:
    root = store.objects.put_object(ManifestNode(0, 0))
    return store.objects.put_object(Commit(root, parents, "t", 0, message))


def test_put_get_round_trip_and_id_is_blake3(store: Store) -> None:
    data = b"artifact bytes"
    oid = store.objects.put(data)
    assert oid == ObjectId.of(data)
    assert store.objects.get(oid) == data
    assert store.objects.get_typed(oid) == (ObjType.BLOB, data)
    assert store.objects.has(oid)
    rec = store.objects.record(oid)
    assert rec is not None and rec.raw_size == len(data) and rec.type == ObjType.BLOB


def test_miss_is_none_and_named_miss_is_error(store: Store) -> None:
    absent = ObjectId.of(b"never stored")
    assert store.objects.get(absent) is None and store.objects.record(absent) is None
    assert store.objects.missing([absent, store.objects.put(b"x")]) == [absent]
    with pytest.raises(ObjectNotFound):
        store.objects.require(absent)


def test_put_is_idempotent_and_batches(store: Store) -> None:
    items = [(ObjType.BLOB, b"a%d" % i) for i in range(100)]
    ids = store.objects.write(items)
    again = store.objects.write(items)
    assert ids == again
    assert store.info()["objects"] == 100
    got = store.objects.get_many(ids[:3] + [ObjectId.of(b"nope")])
    assert [got[i][1] for i in ids[:3]] == [b"a0", b"a1", b"a2"]
    assert len(got) == 3


def test_compressible_payloads_are_compressed_and_random_ones_not(store: Store) -> None:
    text = b"def kernel(x):\n    return x * 2\n" * 2000
    noise = os.urandom(300_000)
    t, n = store.objects.put(text), store.objects.put(noise)
    rt, rn = store.objects.record(t), store.objects.record(n)
    assert rt is not None and rt.compressed and rt.stored_size < len(text) // 5
    assert rn is not None and not rn.compressed
    assert store.objects.get(t) == text and store.objects.get(n) == noise


def test_large_blob_is_chunked_and_streams_back(store: Store, tmp_path: Path) -> None:
    data = os.urandom(store_mod.CHUNK_SIZE * 2 + 12345)
    path = tmp_path / "big"
    path.write_bytes(data)
    seen: list[int] = []
    oid = store.objects.put_file(path, progress=seen.append)
    assert oid == ObjectId.of(data) and sum(seen) == len(data)
    rec = store.objects.record(oid)
    assert rec is not None and rec.chunked and rec.raw_size == len(data)
    assert len(store.objects.chunk_ids(oid)) == 3
    assert b"".join(store.objects.iter_blob(oid)) == data
    assert store.objects.get(oid, verify=True) == data
    # write routes big blobs through the same chunking, to the same id
    assert store.objects.write([(ObjType.BLOB, data)]) == [oid]


def test_structured_type_upgrades_a_plain_blob_with_same_bytes(store: Store) -> None:
    node = ManifestNode(0, 0)
    oid = store.objects.put(node.encode())  # first seen as opaque bytes (e.g. `cas put`)
    assert store.objects.record(oid).type == ObjType.BLOB  # type: ignore[union-attr]
    assert store.objects.put_object(node) == oid
    assert store.objects.record(oid).type == ObjType.NODE  # type: ignore[union-attr]


def test_prefix_resolution_and_ambiguity(store: Store) -> None:
    # deterministic data: find two payloads whose ids share their first 4 hex digits
    seen: dict[str, bytes] = {}
    i = 0
    while True:
        data = b"p%d" % i
        head = ObjectId.of(data).hex[:4]
        if head in seen:
            break
        seen[head] = data
        i += 1
    a, b = store.objects.put(seen[head]), store.objects.put(data)
    with pytest.raises(AmbiguousId) as err:
        store.objects.resolve_unique(head)
    assert err.value.exit_code == 2
    assert sorted(store.objects.resolve_prefix(head)) == sorted([a, b])
    assert store.objects.resolve_unique(a.hex[:20]) == a
    absent = next(p for p in ("0000", "ffff", "1234") if not a.hex.startswith(p) and not b.hex.startswith(p))
    with pytest.raises(ObjectNotFound):
        store.objects.resolve_unique(absent)


def test_set_ref_is_compare_and_swap(store: Store) -> None:
    c1 = commit_in(store, "one")
    c2 = commit_in(store, "two", (c1,))
    assert store.refs.set("refs/heads/main", c1, expected=None) is None
    with pytest.raises(RefConflict) as err:
        store.refs.set("refs/heads/main", c2, expected=None)
    assert "refs/heads/main" in str(err.value) and err.value.exit_code == 4
    with pytest.raises(RefConflict):
        store.refs.set("refs/heads/main", c2, expected=c2)
    assert store.refs.set("refs/heads/main", c2, expected=c1, message="advance") == c1
    assert store.refs.get("refs/heads/main") == c2
    store.refs.set("refs/heads/main", None, expected=c2)
    assert store.refs.get("refs/heads/main") is None


def test_ref_to_missing_object_is_refused(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        store.refs.set("refs/heads/x", ObjectId.of(b"absent"))
    assert store.refs.as_dict() == {}


def test_reflog_records_every_change_and_expires(store: Store) -> None:
    c1, c2 = commit_in(store, "1"), commit_in(store, "2")
    store.refs.set("refs/heads/a", c1, who="me", message="create")
    store.refs.set("refs/heads/a", c2, message="move")
    store.refs.set("refs/heads/ab", c1)
    store.refs.set("refs/heads/a", c2)  # same value: not logged
    log = store.refs.log("refs/heads/a")
    assert [(e.old, e.new, e.message) for e in log] == [(None, c1, "create"), (c1, c2, "move")]
    assert log[0].who == "me"
    assert len(store.refs.log()) == 3
    assert store.refs.as_dict("refs/heads/") == {"refs/heads/a": c2, "refs/heads/ab": c1}
    assert store.refs.expire_log(log[1].time + 1) == 3
    assert store.refs.log() == []


def test_staging_then_promote(store: Store) -> None:
    node = ManifestNode(0, 0)
    oid = node.id
    store.stage.put([(oid, ObjType.NODE, node.encode())])
    assert store.objects.get(oid) is None
    assert store.stage.get(oid) == (ObjType.NODE, node.encode())
    assert store.stage.promote([oid]) == 1
    assert store.objects.get(oid) == node.encode() and store.stage.get(oid) is None
    store.stage.put([(oid, ObjType.NODE, node.encode())])
    assert store.stage.clear() == 1


def test_write_time_is_stamped_and_refreshed(store: Store, clock: Clock) -> None:
    clock.now = 1_000_000.0
    oid = store.objects.put(b"stamped")
    assert store.maintenance.object_time(oid) == 1_000_000
    clock.now = 2_000_000.0
    store.objects.put(b"stamped")  # a re-put freshens, so gc will not take it from a writer
    assert store.maintenance.object_time(oid) == 2_000_000


def test_persists_across_reopen_and_processes_share_path(store_path: Path) -> None:
    with Store.init(store_path) as s:
        oid = s.objects.put(b"kept")
        s.refs.set("refs/heads/main", commit_in(s))
        with Store(store_path) as t:  # a second handle in the same process shares the env
            assert t.objects.get(oid) == b"kept"
    with Store(store_path) as s:
        assert s.objects.get(oid) == b"kept" and "refs/heads/main" in s.refs.as_dict()


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound) as err:
        Store(tmp_path / "nothing")
    assert "no cas store" in str(err.value) and err.value.exit_code == 3


def test_unknown_format_version_is_refused(store_path: Path) -> None:
    with Store.init(store_path) as s:
        s.meta.set("format", "99")
    with pytest.raises(FormatVersionError):
        Store(store_path)


def test_map_grows_past_initial_size(store: Store) -> None:
    before = store.info()["map_size"]
    # incompressible data past the initial map, in batches: the store grows on MapFull
    for _ in range(5):
        store.objects.write([(ObjType.BLOB, os.urandom(1 << 20)) for _ in range(16)])
    info = store.info()
    assert info["map_size"] > before == store_mod.INITIAL_MAP_SIZE
    assert info["objects"] == 80


def test_iter_ids_and_records_cover_everything(store: Store) -> None:
    ids = set(store.objects.write([(ObjType.BLOB, b"r%d" % i) for i in range(25)]))
    assert set(store.objects.iter_ids(batch=7)) == ids
    assert {r.oid for r in store.objects.iter_records()} == ids


def test_threads_share_a_store(store: Store) -> None:
    # a server shares one Store between threads: compression state must not be shared
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> bool:
        data = (b"thread %d line\n" % i) * (3000 + i)  # compressible, so zstd runs
        oid = store.objects.put(data)
        return all(store.objects.get(oid) == data for _ in range(20))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(64)))
    assert store.info()["objects"] == 64


def test_a_write_past_one_transaction_keeps_every_object(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a batch over STREAM_TXN_BYTES goes in several transactions, every object of it
    monkeypatch.setattr(writes, "STREAM_TXN_BYTES", 10_000)
    small = [(ObjType.BLOB, b"small %d " % i * 50) for i in range(200)]  # ~450 B each
    big = (ObjType.BLOB, os.urandom(store_mod.CHUNK_SIZE + 7))  # chunked, among them
    items = [*small[:100], big, *small[100:]]
    ids = store.objects.write(items)
    assert ids == [ObjectId.of(d) for _, d in items]
    assert store.objects.missing(ids) == []
    assert all(store.objects.get(o) == d for o, (_, d) in zip(ids, items, strict=True))


def test_write_time_log_splits_large_batches_and_extends_a_txn(tmp_path: Path) -> None:
    # a batch's ids go in leaf-sized parts; a second stamp in one txn goes on after them
    ids = [ObjectId.of(b"log %d" % i).raw for i in range(150)]
    more = [ObjectId.of(b"more %d" % i).raw for i in range(70)]
    env = lmdb.open(str(tmp_path / "log"), max_dbs=1)
    otime = env.open_db(b"otime")
    try:
        with env.begin(write=True) as txn:
            wtlog.stamp(txn, otime, 1000, b"".join(ids))
        with env.begin(write=True) as txn:
            wtlog.stamp(txn, otime, 2000, b"".join(more[:5]))
            wtlog.stamp(txn, otime, 2000, b"".join(more[5:]))
        with env.begin() as txn:
            parts = [wtlog.LOG_KEY.unpack(bytes(k))[2] for k, _ in txn.cursor(db=otime)]
            times = wtlog.times(txn, otime)
            assert (wtlog.time_of(txn, otime, ids[-1]), wtlog.time_of(txn, otime, more[-1])) == (1000, 2000)
    finally:
        env.close()
    assert parts == [0, 1, 2, 0, 1, 2]  # 150 ids: 60 + 60 + 30; then 5, then 60 + 5
    assert times == {**dict.fromkeys(ids, 1000), **dict.fromkeys(more, 2000)}
