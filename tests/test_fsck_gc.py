"""fsck finds real damage (made with raw LMDB writes); gc frees garbage and keeps the rest."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
from hostile import UNSHOWABLE, Parts, wrong_types
from testclock import Clock

from cas import store as store_mod
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import BadRefTarget
from cas.fsck import BAD_REF, CORRUPT, DANGLING, MISSING, WRONG_TYPE, fsck
from cas.gc import gc
from cas.objects import Commit, Entry, EntryKey, Env, ManifestNode, Tag
from cas.stats import stats
from cas.store import Store

DAY = 86400


def tamper(path: Path, fn: Callable[[lmdb.Transaction, lmdb._Database], None]) -> None:
    """Edit the store's ``objects`` db behind cas's back (no Store may be open on it)."""
    env = lmdb.open(str(path), max_dbs=8, map_size=1 << 30)
    try:
        with env.begin(write=True) as txn:
            fn(txn, env.open_db(b"objects", txn=txn))
    finally:
        env.close()


def flip_byte(oid: ObjectId, offset: int = -1) -> Callable[[lmdb.Transaction, lmdb._Database], None]:
    def go(txn: lmdb.Transaction, db: lmdb._Database) -> None:
        rec = bytearray(txn.get(oid.raw, db=db))
        rec[offset] ^= 0x55
        txn.put(oid.raw, bytes(rec), db=db)

    return go


def drop(oid: ObjectId) -> Callable[[lmdb.Transaction, lmdb._Database], None]:
    return lambda txn, db: txn.delete(oid.raw, db=db)


def snapshot(store: Store, blobs: list[bytes], message: str = "c", parents: tuple[ObjectId, ...] = ()) -> ObjectId:
    """A commit whose manifest leaf holds ``blobs`` (written bottom-up, like real writers)."""
    env = store.objects.put_object(Env({"device": "cpu"}))
    rows = []
    for i, data in enumerate(blobs):
        bid = store.objects.put(data)
        rows.append((EntryKey(env, "inductor", f"k{i}"), Entry(bid, len(data))))
    root = store.objects.put_object(ManifestNode(0, len(rows), entries=tuple(rows)))
    return store.objects.put_object(Commit(root, parents, "t", int(time.time()), message))


def reopen(path: Path, store: Store) -> Store:
    store.close()
    return Store(path)


def errors_of(s: Store) -> list[tuple[str, ObjectId | None]]:
    return [(f.kind, f.oid) for f in fsck(s).errors]


# -- fsck ------------------------------------------------------------------------------


def test_clean_store_passes_and_lists_dangling_as_info(store: Store) -> None:
    c = snapshot(store, [b"a" * 1000, os.urandom(5000)])
    store.refs.set("refs/heads/main", c)
    loose = store.objects.put(b"nobody points here")
    report = fsck(store)
    assert report.ok and report.errors == []
    assert report.objects == 6 and report.refs == 1 and report.reachable == 5
    assert [(f.kind, f.oid) for f in report.findings] == [(DANGLING, loose)]


def test_flipped_payload_byte_is_corrupt(store_path: Path, store: Store) -> None:
    data = os.urandom(4096)  # incompressible: stored verbatim, so the flip hits the bytes
    c = snapshot(store, [data])
    store.refs.set("refs/heads/main", c)
    blob = ObjectId.of(data)
    store.close()
    tamper(store_path, flip_byte(blob))
    s = Store(store_path)
    report = fsck(s)
    # the blob is corrupt, and the ref that reaches it no longer names a sound snapshot
    assert [(f.kind, f.oid) for f in report.errors] == [(CORRUPT, blob), (BAD_REF, c)]
    msg = report.errors[0].message
    assert blob.short() in msg and "hash" in msg and "\n" not in msg
    # without hash verification the flip goes unseen: the option really skips work
    assert fsck(s, verify_hashes=False).ok
    s.close()


@pytest.mark.parametrize(
    "damage",
    ["type-code", "truncated-header", "zstd-payload", "structured-body", "size-field"],
)
def test_damaged_records_are_corrupt(store_path: Path, store: Store, damage: str) -> None:
    text = b"compressible kernel source\n" * 500
    c = snapshot(store, [text])
    store.refs.set("refs/heads/main", c)
    node_id = Commit.decode(store.objects.get(c)).manifest  # type: ignore[arg-type]
    blob = ObjectId.of(text)
    assert store.objects.record(blob).compressed  # type: ignore[union-attr]
    target, edit = {
        "type-code": (blob, flip_byte(blob, 0)),
        "truncated-header": (blob, lambda t, db: t.put(blob.raw, b"\x00\x00", db=db)),
        "zstd-payload": (blob, flip_byte(blob, 14)),
        "structured-body": (node_id, flip_byte(node_id, 15)),
        "size-field": (blob, flip_byte(blob, 3)),
    }[damage]
    store.close()
    tamper(store_path, edit)
    with Store(store_path) as s:
        errs = fsck(s).errors
        assert (CORRUPT, target) in [(f.kind, f.oid) for f in errs]
        assert all("\n" not in f.message for f in errs)


def test_missing_object_breaks_closure_and_its_ref(store_path: Path, store: Store) -> None:
    c = snapshot(store, [b"one", b"two"])
    store.refs.set("refs/heads/main", c)
    store.refs.set("refs/tags/v1", store.objects.put_object(Tag(c, ObjType.COMMIT, "v1", "t", 0, "pin")))
    gone = ObjectId.of(b"two")
    store.close()
    tamper(store_path, drop(gone))
    with Store(store_path) as s:
        report = fsck(s)
        kinds = sorted((f.kind, f.ref or "") for f in report.errors)
        assert kinds == [(BAD_REF, "refs/heads/main"), (BAD_REF, "refs/tags/v1"), (MISSING, "")]
        assert next(f for f in report.errors if f.kind == MISSING).oid == gone


def test_missing_chunk_of_large_blob(store_path: Path, store: Store) -> None:
    data = os.urandom(store_mod.CHUNK_SIZE + 100)
    c = snapshot(store, [data])
    store.refs.set("refs/heads/main", c)
    chunk = store.objects.chunk_ids(ObjectId.of(data))[1]
    store.close()
    tamper(store_path, drop(chunk))
    with Store(store_path) as s:
        found = errors_of(s)
        assert (MISSING, chunk) in found and (BAD_REF, c) in found


def test_ref_at_blob_or_missing_object_is_bad(store_path: Path, store: Store) -> None:
    blob = store.objects.put(b"not a commit")
    with pytest.raises(BadRefTarget):
        store.refs.set("refs/heads/odd", blob)
    c = snapshot(store, [])
    store.refs.set("refs/heads/main", c)
    store.close()
    tamper(store_path, drop(c))
    env = lmdb.open(str(store_path), max_dbs=8, map_size=1 << 30)
    with env.begin(write=True) as txn:  # a ref at a blob, behind cas's back
        txn.put(b"refs/heads/odd", blob.raw, db=env.open_db(b"refs", txn=txn))
    env.close()
    with Store(store_path) as s:
        bad = {f.ref: f.message for f in fsck(s).errors if f.kind == BAD_REF}
        assert set(bad) == {"refs/heads/odd", "refs/heads/main"}
        assert "blob" in bad["refs/heads/odd"] and "missing" in bad["refs/heads/main"]


def test_references_of_the_wrong_type_are_findings(store: Store) -> None:
    """Objects written behind ingest's back (a store that was never checked, or one of an
    older cas): every reference naming an object of another type than its role wants
    is a finding naming both; well-typed references are not."""
    shapes = {shape.name: shape for shape in wrong_types("fsck")}
    for shape in shapes.values():
        store.objects.write((otype, data) for _, otype, data in [*shape.refs, shape.bad])
    report = fsck(store)
    wrong = {f.oid: f.message for f in report.errors if f.kind == WRONG_TYPE}
    # a tag that names a blob fails validation itself: a corrupt tag, its target unchecked
    untyped = shapes.pop("tag names a blob").bad[0]
    assert {f.oid for f in report.errors if f.kind == CORRUPT} == {untyped}
    assert set(wrong) == {shape.bad[0] for shape in shapes.values()}
    for shape in shapes.values():
        assert shape.says in wrong[shape.bad[0]] and shape.bad[0].short() in wrong[shape.bad[0]], shape.name


def test_what_cannot_be_shown_is_corrupt(store: Store) -> None:
    parts = Parts("fsck")
    store.objects.write((otype, data) for _, otype, data in [parts.blob, parts.env, parts.node, parts.commit])
    bad = {make(parts)[0]: name for name, make in UNSHOWABLE.items()}
    store.objects.write((otype, data) for _, otype, data in (make(parts) for make in UNSHOWABLE.values()))
    corrupt = {f.oid for f in fsck(store).errors if f.kind == CORRUPT}
    assert corrupt == set(bad)


def test_progress_reports_every_object(store: Store) -> None:
    store.objects.write([(ObjType.BLOB, b"x%d" % i) for i in range(40)])
    calls: list[tuple[int, int]] = []
    fsck(store, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == 40 and calls[-1] == (40, 40)


# -- gc --------------------------------------------------------------------------------


def test_gc_frees_old_garbage_and_keeps_reachable(store: Store) -> None:
    keep = snapshot(store, [b"kept artifact" * 100])
    store.refs.set("refs/heads/main", keep)
    junk = [os.urandom(10_000), b"compressible junk " * 1000]
    junk_ids = [store.objects.put(d) for d in junk]
    big = store.objects.put(os.urandom(store_mod.CHUNK_SIZE + 1))  # chunked: chunks go with it
    before = stats(store)

    report = gc(store, now=store.clock() + 15 * DAY)
    assert report.objects_freed == 2 + 1 + 2
    assert report.freed_by_type == {"blob": 3, "chunk": 2}
    assert report.raw_bytes_freed == sum(map(len, junk)) + store_mod.CHUNK_SIZE + 1
    after = stats(store)
    assert before.stored_bytes - after.stored_bytes == report.stored_bytes_freed
    assert all(store.objects.get(o) is None for o in [*junk_ids, big])
    assert store.objects.get(ObjectId.of(b"kept artifact" * 100)) is not None
    assert fsck(store).findings == []  # nothing dangling, nothing broken


def test_gc_keeps_young_garbage_and_dry_run_deletes_nothing(store: Store) -> None:
    loose = store.objects.put(b"written a minute ago")
    assert gc(store).objects_freed == 0  # default 14-day grace
    assert store.objects.get(loose) is not None
    dry = gc(store, now=store.clock() + 15 * DAY, dry_run=True)
    assert dry.objects_freed == 1 and dry.dry_run
    assert store.objects.get(loose) is not None


def test_gc_keeps_what_a_young_commit_references(store: Store, clock: Clock) -> None:
    # An old blob, then (later) a commit that references it but no ref yet, as a writer
    # that crashed before moving its ref would leave. The blob must live as long as the
    # commit does, or a later `set_ref` to that commit would name an incomplete one.
    t0 = clock.now
    clock.now = t0 - 30 * DAY
    old_blob = store.objects.put(b"old artifact")
    clock.now = t0
    env = store.objects.put_object(Env({"d": "cpu"}))
    node = store.objects.put_object(
        ManifestNode(0, 1, entries=((EntryKey(env, "pgo", "k"), Entry(old_blob, 12)),))
    )
    commit = store.objects.put_object(Commit(node, (), "t", 0, "orphan"))
    assert gc(store, now=t0 + 1).objects_freed == 0
    assert store.objects.get(old_blob) is not None
    store.refs.set("refs/heads/late", commit)  # the writer comes back and names it
    assert fsck(store).ok


def test_gc_reflog_roots_and_expiry(store: Store, clock: Clock) -> None:
    t0 = clock.now
    clock.now = t0 - 30 * DAY
    c1 = snapshot(store, [b"first"], "1")  # objects written long ago...
    clock.now = t0
    store.refs.set("refs/heads/topic", c1)  # ...named today, then the branch deleted:
    store.refs.set("refs/heads/topic", None)  # only the reflog still names c1
    kept = gc(store, now=t0 + 5)
    assert kept.objects_freed == 0 and store.objects.has(c1) and kept.reachable == 4
    # past grace, reflog entries stop being roots; past expiry they are dropped
    freed = gc(store, now=t0 + 100 * DAY)
    assert freed.reflog_expired == 2 and store.refs.log() == []
    assert freed.objects_freed == 4 and not store.objects.has(c1)


def test_gc_clears_old_staged_objects_but_keeps_what_young_ones_need(
    store: Store, clock: Clock
) -> None:
    t0 = clock.now
    clock.now = t0 - 30 * DAY
    blob = store.objects.put(b"arrived before its manifest")
    stale = ManifestNode(0, 0)
    store.stage.put([(stale.id, ObjType.NODE, stale.encode())])
    clock.now = t0
    env = store.objects.put_object(Env({"d": "cpu"}))
    fresh = ManifestNode(0, 1, entries=((EntryKey(env, "pgo", "k"), Entry(blob, 27)),))
    store.stage.put([(fresh.id, ObjType.NODE, fresh.encode())])
    report = gc(store, now=t0 + 1)
    assert report.stage_cleared == 1
    assert store.stage.get(stale.id) is None and store.stage.get(fresh.id) is not None
    assert store.objects.has(blob)  # a pull in progress still needs it
    assert store.stage.promote([fresh.id]) == 1 and fsck(store).ok


def test_gc_spares_an_object_rewritten_after_the_mark(store: Store, clock: Clock) -> None:
    # the sweep re-reads write times inside its transaction
    t0 = clock.now
    clock.now = t0 - 30 * DAY
    oid = store.objects.put(b"about to be reused")
    clock.now = t0
    store.objects.put(b"about to be reused")  # a writer re-puts it before naming it
    assert store.maintenance.sweep([oid], before=int(t0 - DAY)) == []
    assert store.objects.has(oid)


def test_objects_without_write_time_are_never_swept(store_path: Path, store: Store, clock: Clock) -> None:
    oid = store.objects.put(b"from an older cas")
    store.close()
    env = lmdb.open(str(store_path), max_dbs=8, map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"otime", txn=txn), delete=False)  # as a cas without otime left it
    env.close()
    with Store(store_path, clock=clock) as s:
        assert gc(s, now=clock.now + 100 * DAY).objects_freed == 0
        assert s.maintenance.object_time(oid) == int(clock.now)  # its age starts at this gc


def test_write_time_log_reads_old_per_object_records_and_gc_compacts_it(
    store_path: Path, store: Store, clock: Clock
) -> None:
    t0 = clock.now
    old = store.objects.put(b"stamped per object by an earlier cas")
    store.close()
    env = lmdb.open(str(store_path), max_dbs=8, map_size=1 << 30)
    with env.begin(write=True) as txn:  # the per-object form: 32-byte id -> u32 LE
        db = env.open_db(b"otime", txn=txn)
        txn.drop(db, delete=False)
        txn.put(old.raw, struct.pack("<I", int(t0) - 30 * DAY), db=db)
    env.close()
    with Store(store_path, clock=clock) as s:
        assert s.maintenance.object_time(old) == int(t0) - 30 * DAY
        clock.now = t0
        young = [s.objects.put(b"young %d" % i) for i in range(3)]
        for _ in range(3):
            s.objects.write([(ObjType.BLOB, b"young %d" % i) for i in range(3)])  # re-puts log again
        assert gc(s, now=t0 + 1).objects_freed == 1  # the old one, past its grace
        assert s.maintenance.object_times() == dict.fromkeys(young, int(t0))
    # compaction left one entry per live id, none of the old form (docs/format.md, otime)
    env = lmdb.open(str(store_path), max_dbs=8, map_size=1 << 30, readonly=True)
    with env.begin() as txn:
        values = [bytes(v) for _, v in txn.cursor(db=env.open_db(b"otime", txn=txn, create=False))]
    env.close()
    assert sorted(len(v) for v in values) == [96]


# -- stats -----------------------------------------------------------------------------


def test_stats_by_type(store: Store) -> None:
    c = snapshot(store, [b"z" * 10_000, os.urandom(1000)])
    store.refs.set("refs/heads/main", c)
    store.refs.set("refs/tags/v1", c)
    s = stats(store)
    assert {k: v.count for k, v in s.by_type.items()} == {"blob": 2, "env": 1, "node": 1, "commit": 1}
    assert s.by_type["blob"].raw_bytes == 11_000
    assert s.by_type["blob"].stored_bytes < 11_000  # the zeros compress
    assert s.objects == 5 and s.refs == 2
    assert s.refs_by_namespace == {"refs/heads": 1, "refs/tags": 1}
    assert s.raw_bytes == sum(v.raw_bytes for v in s.by_type.values())


def test_ref_stats_counts_entries_by_kind_and_env(store: Store) -> None:
    from cas import manifest

    cpu = store.objects.put_object(Env({"device": "cpu"}))
    gpu = store.objects.put_object(Env({"device": "h100"}))
    blob = store.objects.put(b"kernel" * 100)
    rows = {
        EntryKey(env, kind, f"k{i}"): Entry(blob, 600)
        for i, (env, kind) in enumerate(
            [(cpu, "inductor"), (cpu, "inductor"), (cpu, "autotune"), (gpu, "inductor")]
        )
    }
    root = manifest.build(store, rows)
    commit = store.objects.put_object(Commit(root, (), "t", 0, "four entries"))
    tag = store.objects.put_object(Tag(commit, ObjType.COMMIT, "v1", "t", 0, "pin"))
    store.refs.set("refs/tags/v1", tag)
    s = stats(store, "refs/tags/v1")  # the tag is followed to its commit
    assert s.manifest is not None and s.manifest.commit == commit and s.manifest.manifest == root
    assert s.manifest.entries == 4 and s.manifest.entry_bytes == 2400
    d = s.to_dict()
    assert d["by_kind"] == {"inductor": {"count": 3, "bytes": 1800}, "autotune": {"count": 1, "bytes": 600}}
    assert d["by_env"] == {cpu.hex: {"count": 3, "bytes": 1800}, gpu.hex: {"count": 1, "bytes": 600}}
    # a manifest root or a commit id names the same entries
    assert stats(store, root).manifest.entries == stats(store, commit).manifest.entries == 4  # type: ignore[union-attr]


def test_ref_stats_of_unknown_ref_is_a_clear_error(store: Store) -> None:
    from cas.errors import RefNotFound

    with pytest.raises(RefNotFound) as err:
        stats(store, "refs/heads/nope")
    assert str(err.value) == "no ref named refs/heads/nope" and err.value.exit_code == 3


def test_write_times_do_not_outlive_their_objects(store: Store) -> None:
    node = ManifestNode(0, 0)
    store.stage.put([(node.id, ObjType.NODE, node.encode())])
    assert store.maintenance.object_time(node.id) is not None
    store.stage.clear()
    assert store.maintenance.object_time(node.id) is None
    loose = store.objects.put(b"garbage")
    gc(store, now=store.clock() + 15 * DAY)
    assert store.maintenance.object_time(loose) is None and store.maintenance.object_times() == {}


def test_zero_grace_frees_what_was_just_written(store: Store) -> None:
    # like `git gc --prune=now`: no youth protection at all (unsafe beside live writers)
    loose = store.objects.put(b"just now")
    report = gc(store, grace_seconds=0)
    assert report.objects_freed == 1 and not store.objects.has(loose)
