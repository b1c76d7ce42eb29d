"""History: commits, log order, ancestry, merge base, and commit_changes under races."""

from __future__ import annotations

from cas import history, manifest, refs
from cas.digest import ObjectId
from cas.objects import Entry, EntryKey, ManifestNode
from cas.store import Store


def test_log_is_newest_first_and_merge_base_finds_the_fork(store: Store) -> None:
    root = store.objects.put_object(ManifestNode(0, 0))
    base = history.commit(store, root, [], "base", when=100)
    left = history.commit(store, root, [base], "left", when=200)
    right = history.commit(store, root, [base], "right", when=300)
    merge = history.commit(store, root, [left, right], "merge", when=400)
    order = [c.message for _, c in history.log(store, merge)]
    assert order == ["merge", "right", "left", "base"]
    assert history.merge_base(store, left, right) == base
    assert history.is_ancestor(store, base, merge)
    assert not history.is_ancestor(store, left, right)
    assert [c.message for _, c in history.log(store, merge, limit=2)] == ["merge", "right"]


def test_commit_changes_builds_on_the_tip(store: Store) -> None:
    env = store.objects.put(b"env-stand-in")
    blob = store.objects.put(b"artifact")
    k1 = EntryKey(env, "inductor", "fkey1")
    k2 = EntryKey(env, "inductor", "fkey2")
    c1 = history.commit_changes(store, "main", {k1: Entry(blob, 8)}, "one")
    c2 = history.commit_changes(store, "main", {k2: Entry(blob, 8)}, "two")
    tip = refs.load_commit(store, refs.resolve(store, "main"))
    assert refs.resolve(store, "main") == c2
    assert tip.parents == (c1,)
    assert manifest.lookup(store, tip.manifest, k1) == Entry(blob, 8)
    assert manifest.lookup(store, tip.manifest, k2) == Entry(blob, 8)
    assert manifest.count(store, tip.manifest) == 2


def test_commit_refuses_missing_manifest(store: Store) -> None:
    import pytest

    from cas.errors import ObjectNotFound

    with pytest.raises(ObjectNotFound):
        history.commit(store, ObjectId.of(b"no such manifest"), [], "x")
