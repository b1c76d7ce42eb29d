"""Only what is missing travels; a cut transfer resumes without re-sending."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cas import history, manifest, sync
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import TransientRemoteError
from cas.objects import Entry, EntryKey
from cas.refs import load_commit
from cas.remote.faults import CountingRemote, FaultyRemote
from cas.remote.local import LocalRemote
from cas.remote.retry import RetryingRemote
from cas.store import Store
from cas.sync.walk import PARALLEL

from .helpers import ENV_A, add, assert_complete, entries_of, new_store, remote_at

MAIN = [("refs/heads/main", "refs/heads/main")]
BIG = 100_000


def _ids(store: Store) -> set:
    return {r.oid for r in store.objects.iter_records()}


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose main holds 100,000 entries; copied (LMDB file copy) per test."""
    base = tmp_path_factory.mktemp("big") / "store"
    with Store.init(base) as s:
        env = s.objects.put_object(ENV_A)
        blobs = s.objects.write((ObjType.BLOB, b"artifact %d" % i) for i in range(BIG))
        entries = {
            EntryKey(env, "inductor", f"k{i}"): Entry(blob, len(b"artifact %d" % i))
            for i, blob in enumerate(blobs)
        }
        root = manifest.build(s, entries)
        tip = history.commit(s, root, [], "100k entries")
        s.refs.set("refs/heads/main", tip)
    return base


def test_push_of_k_new_entries_onto_100k_sends_o_k(big_pair: Path, tmp_path: Path) -> None:
    shutil.copytree(big_pair, tmp_path / "local")
    shutil.copytree(big_pair, tmp_path / "remote")
    local = Store(tmp_path / "local")
    inner = LocalRemote(tmp_path / "remote")
    before = _ids(inner.store)
    k = 50
    add(local, "new", k, size=2000, random_bytes=True)
    new_objects = _ids(local) - before
    new_bytes = sum(len(local.objects.get(o)) for o in new_objects)
    counting = CountingRemote(inner)
    res = sync.push(local, counting, MAIN)
    assert set(counting.sent_ids) == new_objects  # exactly the new objects, each once
    assert len(counting.sent_ids) == len(new_objects)
    assert counting.sent_bytes <= 1.2 * new_bytes + 64 * 1024
    assert res.stats.wire_bytes <= 1.2 * new_bytes + 64 * 1024
    # list_refs, missing, a pack of blobs, a pack of nodes and the commit, update_ref
    assert counting.requests == 5
    # And a pull of the same change by a store at the old state fetches just that.
    shutil.copytree(big_pair, tmp_path / "other")
    other = Store(tmp_path / "other")
    counting = CountingRemote(inner)
    _, done = sync.pull(other, counting, branch="main")
    assert done.kind == "fast-forward"
    assert counting.fetched_objects == len(new_objects)
    assert counting.fetched_bytes == new_bytes
    assert manifest.count(other, main_root(other)) == BIG + k
    for s in (local, other):
        s.close()
    inner.close()


def main_root(store: Store) -> ObjectId:
    return load_commit(store, store.refs.get("refs/heads/main")).manifest


def test_cut_push_resumes_without_resending(tmp_path: Path) -> None:
    local = new_store(tmp_path / "local")
    remote = remote_at(tmp_path / "remote")
    # More packs of 8 MiB than a push keeps in flight (PARALLEL), so that the cut falls
    # among them: the fault counts packs as they finish, and the first PARALLEL start
    # together, before any has finished.
    n = 8 * (PARALLEL + 2)
    add(local, "big", n, size=1 << 20, random_bytes=True)
    faulty = FaultyRemote(remote, drop_after_packs=1)
    with pytest.raises(TransientRemoteError, match="dropped"):
        sync.push(local, faulty, MAIN)
    arrived = _ids(remote.store)
    assert 0 < len(arrived) < n and "refs/heads/main" not in remote.list_refs()
    counting = CountingRemote(remote)
    sync.push(local, counting, MAIN)
    assert not arrived & set(counting.sent_ids)  # nothing that arrived is sent again
    assert len(counting.sent_ids) == len(_ids(local)) - len(arrived)
    assert_complete(remote.store)
    assert entries_of(remote.store, "main") == entries_of(local, "main")
    local.close()
    remote.close()


def test_retrying_remote_resumes_within_one_push(tmp_path: Path) -> None:
    local = new_store(tmp_path / "local")
    remote = remote_at(tmp_path / "remote")
    add(local, "big", 24, size=1 << 20, random_bytes=True)
    counting = CountingRemote(remote)
    retrying = RetryingRemote(FaultyRemote(counting, drop_after_packs=1), sleep=lambda s: None)
    sync.push(local, retrying, MAIN)
    assert retrying.retries == 1
    assert len(counting.sent_ids) == len(set(counting.sent_ids)) == len(_ids(local))
    assert_complete(remote.store)
    local.close()
    remote.close()


def test_cut_pull_resumes_without_refetching(tmp_path: Path) -> None:
    origin = new_store(tmp_path / "origin")
    add(origin, "big", 24, size=1 << 20, random_bytes=True)
    add(origin, "more", 40)
    local = new_store(tmp_path / "local")
    faulty = FaultyRemote(LocalRemote(tmp_path / "origin"), drop_after_fetches=4)
    with pytest.raises(TransientRemoteError):
        sync.pull(local, faulty, branch="main")
    assert local.refs.get("refs/heads/main") is None
    kept = _ids(local)
    staged = [r.oid for r, _ in local.stage.entries()]
    assert kept and staged  # blobs stored, structured objects staged
    assert_complete(local)  # nothing stored without its references
    counting = CountingRemote(LocalRemote(tmp_path / "origin"))
    _, done = sync.pull(local, counting, branch="main")
    assert done.kind == "created"
    total = len(_ids(origin))
    assert counting.fetched_objects == total - len(kept) - len(staged)
    assert list(local.stage.entries()) == []
    assert entries_of(local, "main") == entries_of(origin, "main")
    assert_complete(local)
    origin.close()
    local.close()


def test_big_blob_travels_whole_and_is_chunked_on_arrival(tmp_path: Path) -> None:
    local = new_store(tmp_path / "local")
    remote = remote_at(tmp_path / "remote")
    add(local, "huge", 1, size=9 << 20, random_bytes=True)
    sync.push(local, remote, MAIN)
    blob = next(iter(entries_of(local, "main").values())).blob
    assert remote.store.objects.chunk_ids(blob)  # stored as chunks over there
    other = new_store(tmp_path / "other")
    sync.pull(other, remote, branch="main")
    assert other.objects.chunk_ids(blob) and other.objects.get(blob) == local.objects.get(blob)
    assert_complete(other)
    for s in (local, other):
        s.close()
    remote.close()
