"""One hash check for every path that hands a stored blob on (cas.torch.blobs): a blob
stored under an id its bytes do not hash to is refused the same way by hydrate, the live
backend, Mega-Cache export and autotune records; each refusal is counted, and a process
says so once."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CorruptObject
from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.refs import branch_ref, load_commit
from cas.store import Store
from cas.torch import blobs, warn
from cas.torch.autotune import device_class, records_for_here
from cas.torch.capture import export_megacache
from cas.torch.env import current_env
from cas.torch.hydrate import hydrate
from cas.torch.live import LiveCache

GOOD = b"the bytes torch compiled " * 8
KEY = "fcorruptedgraphkey0123456789"


@pytest.fixture
def broken(store: Store) -> tuple[Store, Env, Entry]:
    """A store whose branch main holds an FX entry and an autotune record, both naming
    one blob whose stored bytes (a flipped byte, as on a damaged disk) do not hash to it."""
    env = current_env()
    env_id = store.objects.put_object(env)
    oid = ObjectId.of(GOOD)
    # A fault below the store's own checks: bytes written under an id they do not hash to.
    store.objects.write([(oid, ObjType.BLOB, GOOD[:-1] + b"!")], verified=True)
    entry = Entry(oid, len(GOOD), None, {})
    changes = {EntryKey(env_id, "inductor", KEY, ""): entry,
               EntryKey(env_id, "autotune_record", "gemm/mm/0123456789abcdef0123", device_class()): entry}
    commit_changes(store, "main", changes, "broken", {})
    return store, env, entry


@pytest.fixture
def one_warning() -> Iterator[list[warnings.WarningMessage]]:
    warn.forget()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _cas_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, warn.CasWarning)]


def test_hydrate_skips_it_counts_it_and_says_so_once(broken: tuple[Store, Env, Entry], tmp_path: Path,
                                                     one_warning: list[warnings.WarningMessage]) -> None:
    store, env, _ = broken
    before = blobs.refused()
    for attempt in ("first", "second"):
        res = hydrate(store, "main", tmp_path / attempt, env=env, pch_dir=tmp_path / "pch")
        assert res.corrupt == 2 and res.written == 0  # the FX entry and the autotune record
        assert not any((tmp_path / attempt).rglob(f"{KEY}*"))
    assert blobs.refused() == before + 4
    [line] = _cas_warnings(one_warning)
    assert "is corrupt" in line and "cas fsck" in line


def test_the_live_backend_misses_it_counts_it_and_says_so_once(
        broken: tuple[Store, Env, Entry], one_warning: list[warnings.WarningMessage]) -> None:
    store, env, _ = broken
    tip = store.refs.get(branch_ref("main"))
    assert tip is not None
    live = LiveCache(store, env, root=load_commit(store, tip).manifest, branch=None)
    before = blobs.refused()
    assert live.get(f"pt2:fx-graph-v1::{KEY}:c1") is None
    assert live.get(f"pt2:fx-graph-v1::{KEY}:c1") is None
    assert live.stats.hits == 0 and live.stats.misses == 2 and live.stats.errors == 0
    assert blobs.refused() == before + 2
    [line] = _cas_warnings(one_warning)
    assert "is corrupt" in line


def test_autotune_records_skip_it_and_count_it(broken: tuple[Store, Env, Entry],
                                               one_warning: list[warnings.WarningMessage]) -> None:
    store, _, entry = broken
    ek = EntryKey(ObjectId.of(b"env"), "autotune_record", "gemm/mm/0123456789abcdef0123", device_class())
    before = blobs.refused()
    found = records_for_here(store, [(ek, entry), (ek, entry)])
    assert found.missing == 2 and found.records == []
    assert blobs.refused() == before + 2
    assert len(_cas_warnings(one_warning)) == 1


def test_export_refuses_with_the_typed_error(broken: tuple[Store, Env, Entry]) -> None:
    store, env, entry = broken
    before = blobs.refused()
    with pytest.raises(CorruptObject, match="is corrupt") as raised:
        export_megacache(store, "main", env=env)
    assert raised.value.fields["oid"] == entry.blob
    assert blobs.refused() == before + 1


def test_a_missing_blob_is_refused_the_same_way(store: Store) -> None:
    ek = EntryKey(ObjectId.of(b"env"), "inductor", KEY, "")
    entry = Entry(ObjectId.of(b"never stored"), 12, None, {})
    before = blobs.refused()
    with pytest.raises(CorruptObject, match="missing from the store"):
        blobs.read(store, ek, entry)
    assert blobs.refused() == before + 1


def test_sound_bytes_of_the_wrong_size_are_refused(store: Store) -> None:
    oid = store.objects.put(GOOD)
    with pytest.raises(CorruptObject, match="its entry says"):
        blobs.read(store, EntryKey(ObjectId.of(b"env"), "inductor", KEY, ""), Entry(oid, len(GOOD) + 1, None, {}))
    assert blobs.read(store, EntryKey(ObjectId.of(b"env"), "inductor", KEY, ""),
                      Entry(oid, len(GOOD), None, {})) == GOOD
