"""A size-bounded store (cas.budget): a budget gc keeps tags and the last N commits of each
branch, evicts the other blobs least recently read first until the store fits, never
evicts what is younger than the grace period, keeps history, and leaves fsck clean."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Cas
from testclock import Clock

from cas import budget as budgets
from cas import history, manifest
from cas.budget import Budget
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import BudgetTooSmall
from cas.fsck import fsck
from cas.gc import gc
from cas.objects import Entry, EntryKey, Env
from cas.refs import create_tag
from cas.stats import stats
from cas.store import CHUNK_SIZE, Store
from cas.store.reads import READ_BATCH

DAY = 86400
BLOB = 1000  # bytes: below the compression threshold, so stored size ~ raw size
ENV = Env({"device": "cpu"})


def build_history(store: Store, commits: int, per_commit: int) -> list[list[ObjectId]]:
    """``main`` with ``commits`` commits; each holds the same keys with new bytes (a
    recompile), so an older commit's blobs are named by it alone. ``release/1`` tags the
    first. Returns the blob ids of each commit, oldest first."""
    store.objects.put_object(ENV)
    tip: ObjectId | None = None
    out = []
    for i in range(commits):
        blobs = store.objects.write((ObjType.BLOB, os.urandom(BLOB)) for _ in range(per_commit))
        entries = {EntryKey(ENV.id, "inductor", f"k{j}"): Entry(b, BLOB) for j, b in enumerate(blobs)}
        root = manifest.build(store, entries)
        tip = history.commit(store, root, [tip] if tip else [], f"c{i}", when=int(store.clock()) + i)
        store.refs.set("refs/heads/main", tip, expected=None if i == 0 else store.refs.get("refs/heads/main"))
        if i == 0:
            create_tag(store, "release/1", tip, message="pin")
        out.append(blobs)
    return out


def stored(store: Store) -> int:
    return stats(store).stored_bytes


def present(store: Store, ids: list[ObjectId]) -> int:
    return sum(store.objects.has(o) for o in ids)


def test_budget_evicts_unread_old_blobs_first_and_keeps_tags_recent_commits_and_history(
    store: Store, clock: Clock
) -> None:
    blobs = build_history(store, commits=6, per_commit=20)
    clock.now += 100
    store.maintenance.note_reads(blobs[1])  # c1's entries are still in use somewhere
    store.maintenance.flush_reads()
    clock.now += 30 * DAY
    size = stored(store)
    budget = Budget(max_size=size - 35 * BLOB, keep_commits=2)

    report = gc(store, grace_seconds=DAY, budget=budget)

    assert report.evicted == 35 and report.size_after is not None and report.size_after <= budget.max_size
    assert stored(store) <= budget.max_size
    for kept in (blobs[0], blobs[4], blobs[5], blobs[1]):  # tag, last 2 commits, read recently
        assert present(store, kept) == 20
    assert present(store, blobs[2] + blobs[3]) == 5  # never read: evicted first
    check = fsck(store)
    assert check.ok, check.errors
    assert check.evicted == 35
    tip = store.refs.get("refs/heads/main")
    assert tip is not None and len(list(history.log(store, tip))) == 6  # history is whole


def test_a_budget_smaller_than_what_must_stay_deletes_nothing(store: Store, clock: Clock) -> None:
    build_history(store, commits=4, per_commit=10)
    clock.now += 30 * DAY
    garbage = store.objects.put(b"unreachable" * 10)
    clock.now += 30 * DAY
    before = set(store.objects.iter_ids())
    with pytest.raises(BudgetTooSmall) as info:
        gc(store, grace_seconds=DAY, budget=Budget(max_size=20 * BLOB, keep_commits=2))
    assert "\n" not in str(info.value) and "smaller than" in str(info.value)
    assert set(store.objects.iter_ids()) == before and store.objects.has(garbage)


def test_blobs_younger_than_the_grace_period_are_never_evicted(store: Store, clock: Clock) -> None:
    blobs = build_history(store, commits=4, per_commit=10)
    clock.now += 3600  # an hour old: young for a grace of a day
    size = stored(store)
    with pytest.raises(BudgetTooSmall):
        gc(store, grace_seconds=DAY, budget=Budget(max_size=size - BLOB, keep_commits=1))
    assert all(present(store, b) == 10 for b in blobs)
    clock.now += 2 * DAY
    report = gc(store, grace_seconds=DAY, budget=Budget(max_size=size - BLOB, keep_commits=1))
    assert report.evicted == 1


def test_reads_are_noted_in_memory_and_written_in_batches(store: Store) -> None:
    ids = [ObjectId.of(str(i).encode()) for i in range(READ_BATCH + 10)]
    store.maintenance.note_reads(ids[:1000])
    store.maintenance.note_reads(ids[:1000])  # the same blobs again: still nothing written
    assert store.maintenance.read_times() == {}
    store.maintenance.note_reads(ids[1000:])  # the batch is full: one write of all of them
    assert len(store.maintenance.read_times()) == len(ids)
    store.maintenance.note_reads(ids[:5])
    assert store.maintenance.flush_reads() == 5


def test_an_evicted_blob_stored_again_is_whole_again(store: Store, clock: Clock) -> None:
    build_history(store, commits=3, per_commit=5)
    data = b"x" * BLOB
    blob = store.objects.put(data)
    root = manifest.update(store, manifest.build(store, {}), {EntryKey(ENV.id, "inductor", "old"): Entry(blob, BLOB)})
    tip = store.refs.get("refs/heads/main")
    assert tip is not None
    side = history.commit(store, root, [tip], "side", when=0)
    store.refs.set("refs/heads/main", history.commit(store, manifest.build(store, {}), [side], "drop", when=int(clock.now) + 10),
                  expected=tip)
    clock.now += 30 * DAY
    # c1, c2 and the side commit's 11 blobs are all that may go, and all must
    gc(store, grace_seconds=DAY, budget=Budget(max_size=stored(store) - 11 * BLOB, keep_commits=1))
    assert not store.objects.has(blob) and blob in store.maintenance.evicted_ids()
    store.objects.put(data)  # recorded again (a recompile of the same bytes)
    assert fsck(store).ok
    gc(store, grace_seconds=DAY)
    assert store.objects.has(blob) and blob not in store.maintenance.evicted_ids()


def test_cli_budget_gc_saved_budget_and_stats(cas: Cas, store_path: Path) -> None:
    clock = Clock()
    clock.now -= 60 * DAY
    with Store.init(store_path, clock=clock) as s:
        build_history(s, commits=5, per_commit=10)  # c1 and c2 may go: 20 blobs
    bad = cas("gc", "--max-size", "1K", "--grace", "1d", ok=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) <= 2
    assert bad.stderr.startswith("cas: error: budget of 1024 bytes is smaller than") and "Traceback" not in bad.stderr
    size = json.loads(cas("--json", "stats").stdout)["stored_bytes"]
    budget = size - 15 * BLOB
    cas("gc", "--max-size", str(budget), "--keep-commits", "2", "--grace", "1d", "--save", "--dry-run")
    preview = json.loads(cas("--json", "stats").stdout)["gc"]
    assert preview["max_size"] == budget and preview["keep_commits"] == 2 and preview["evicts"] == 15
    assert preview["size"] == size and preview["frees_bytes"] >= 15 * BLOB
    done = json.loads(cas("--json", "gc").stdout)  # the saved budget applies
    assert done["evicted"] == 15 and done["stored_bytes_freed"] == preview["frees_bytes"]
    text = cas("stats").stdout
    assert "budget" in text and "next gc frees" in text
    assert json.loads(cas("--json", "fsck").stdout)["evicted"] == 15
    cas("gc", "--max-size", "none", "--save")
    with Store(store_path) as s:
        assert budgets.load(s) is None


def test_a_chunked_blob_is_evicted_with_its_chunks(store: Store, clock: Clock) -> None:
    big = os.urandom(CHUNK_SIZE + 1000)
    old = store.objects.put(big)
    chunks = store.objects.chunk_ids(old)
    root = manifest.build(store, {EntryKey(ENV.id, "inductor", "big"): Entry(old, len(big))})
    store.objects.put_object(ENV)
    first = history.commit(store, root, [], "big", when=1)
    store.refs.set("refs/heads/main", first, expected=None)
    build = manifest.build(store, {EntryKey(ENV.id, "inductor", "small"): Entry(store.objects.put(b"s" * BLOB), BLOB)})
    store.refs.set("refs/heads/main", history.commit(store, build, [first], "small", when=2), expected=first)
    clock.now += 30 * DAY
    report = gc(store, grace_seconds=DAY, budget=Budget(max_size=64 << 10, keep_commits=1))
    assert report.evicted == 1 and report.evicted_bytes >= len(big)
    assert not store.objects.has(old) and not any(store.objects.has(c) for c in chunks)
    assert fsck(store).ok and stored(store) <= 64 << 10


def test_a_blob_written_again_after_the_plan_is_not_evicted(store: Store, clock: Clock) -> None:
    a, b = store.objects.put(b"a" * BLOB), store.objects.put(b"b" * BLOB)
    clock.now += 30 * DAY
    store.objects.put(b"a" * BLOB)  # a concurrent writer stores it again (it will name it)
    gone = store.maintenance.evict([(a, []), (b, [])], before=clock.now - DAY)
    assert [r.oid for r in gone] == [b]
    assert store.objects.has(a) and not store.objects.has(b) and store.maintenance.evicted_ids() == {b}


def test_hydrate_counts_as_a_read(store: Store, tmp_path: Path) -> None:
    # cas.torch.hydrate with an explicit env imports no torch: cheap enough for here
    from cas.history import commit_changes
    from cas.torch.hydrate import hydrate

    store.objects.put_object(ENV)
    blob = store.objects.put(b"graph" * 20)
    commit_changes(store, "main", {EntryKey(ENV.id, "inductor", "fgraphabc"): Entry(blob, 100)}, "m")
    result = hydrate(store, "main", tmp_path / "cache", env=ENV, check_policy=False, pch_dir=tmp_path / "pch")
    assert result.written == 1
    store.maintenance.flush_reads()
    assert blob in store.maintenance.read_times()
