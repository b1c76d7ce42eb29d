"""What comes from a remote is verified before anything of it is stored or published."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas import sync
from cas.errors import CorruptObject, ObjectNotFound, RemoteError
from cas.remote.faults import FaultyRemote
from cas.remote.local import LocalRemote
from cas.store import Store

from .helpers import add, assert_complete, entries_of, new_store

MAIN = [("refs/heads/main", "refs/heads/main")]


def _snapshot(store: Store) -> tuple[set, dict, list]:
    return (
        {r.oid for r in store.objects.iter_records()},
        store.refs.as_dict(),
        [r.oid for r, _ in store.stage.entries()],
    )


def test_corrupt_objects_from_a_remote_are_refused_and_not_stored(tmp_path: Path) -> None:
    origin = new_store(tmp_path / "origin")
    add(origin, "x", 5)
    local = new_store(tmp_path / "local")
    before = _snapshot(local)
    bad = FaultyRemote(LocalRemote(tmp_path / "origin"), corrupt_fetch=True)
    with pytest.raises(CorruptObject, match="is corrupt: its bytes hash to"):
        sync.pull(local, bad, branch="main", remote_name="origin")
    assert _snapshot(local) == before
    origin.close()
    local.close()


def test_a_remote_missing_a_referenced_object_is_a_clear_error(tmp_path: Path) -> None:
    origin = new_store(tmp_path / "origin")
    add(origin, "x", 5)
    blob = next(iter(entries_of(origin, "main").values())).blob
    origin.maintenance.delete([blob])  # break the origin on purpose
    local = new_store(tmp_path / "local")
    with pytest.raises(RemoteError, match="lacks object"):
        sync.pull(local, LocalRemote(tmp_path / "origin"), branch="main", remote_name="origin")
    assert local.refs.as_dict() == {}
    assert_complete(local)
    origin.close()
    local.close()


def test_push_cannot_publish_a_ref_to_an_object_the_remote_lacks(tmp_path: Path) -> None:
    remote = LocalRemote(Store.init(tmp_path / "r").path)
    local = new_store(tmp_path / "local")
    tip = add(local, "x")
    with pytest.raises(ObjectNotFound, match="does not hold"):
        remote.update_ref("refs/heads/main", tip, None)
    assert remote.list_refs() == {}
    sync.push(local, remote, MAIN)
    assert remote.list_refs() == {"refs/heads/main": tip}
    local.close()
    remote.close()


def test_push_from_an_incomplete_store_sends_nothing(tmp_path: Path) -> None:
    remote = LocalRemote(Store.init(tmp_path / "r").path)
    local = new_store(tmp_path / "local")
    add(local, "x", 3)
    blob = next(iter(entries_of(local, "main").values())).blob
    local.maintenance.delete([blob])
    with pytest.raises(ObjectNotFound, match="not in this store"):
        sync.push(local, remote, MAIN)
    assert remote.list_refs() == {} and remote.store.info()["objects"] == 0
    local.close()
    remote.close()
