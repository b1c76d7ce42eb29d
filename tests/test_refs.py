"""Refs: names, revision parsing, compare-and-swap, tags that never move, reflog."""

from __future__ import annotations

import pytest

from cas import history, refs
from cas.digest import ObjectId
from cas.errors import (
    AmbiguousId,
    BadRefName,
    BadRefTarget,
    ObjectNotFound,
    RefConflict,
    RefNotFound,
    TagExists,
)
from cas.objects import ManifestNode
from cas.store import Store


def _chain(store: Store, n: int) -> list:
    root = store.objects.put_object(ManifestNode(0, 0))
    ids, parents = [], []
    for i in range(n):
        oid = history.commit(store, root, parents, f"c{i}", when=1000 + i)
        ids.append(oid)
        parents = [oid]
    return ids


@pytest.mark.parametrize("name", ["refs/heads/a..b", "refs/heads/a b", "refs/heads/x.lock", "heads/main",
                                  "refs/heads/", "refs/heads/a~1", "refs/heads/.hidden", "refs/heads/a//b"])
def test_bad_ref_names_are_refused(name: str) -> None:
    with pytest.raises(BadRefName):
        refs.check_name(name)


def test_branch_resolution_and_ancestry_suffixes(store: Store) -> None:
    ids = _chain(store, 4)
    refs.set_branch(store, "main", ids[-1], expected=None)
    assert refs.resolve(store, "main") == ids[3]
    assert refs.resolve(store, "refs/heads/main") == ids[3]
    assert refs.resolve(store, "HEAD") == ids[3]
    assert refs.resolve(store, "main~2") == ids[1]
    assert refs.resolve(store, "main^^") == ids[1]
    assert refs.resolve(store, "main~1^") == ids[1]
    assert refs.resolve(store, ids[0].hex[:10]) == ids[0]
    with pytest.raises(RefNotFound):
        refs.resolve(store, "main~9")
    with pytest.raises(RefNotFound):
        refs.resolve(store, "nope")


def test_ambiguous_prefix_is_reported(store: Store) -> None:
    # Two blobs whose ids share their first 4 hex digits (found by hashing, ~300 tries),
    # both stored: the prefix names two objects.
    seen: dict[str, bytes] = {}
    for i in range(5000):
        data = str(i).encode()
        p = ObjectId.of(data).hex[:4]
        if p in seen:
            break
        seen[p] = data
    else:
        raise AssertionError("no 4-digit collision in 5000 ids")
    assert store.objects.put(seen[p]).hex[:4] == store.objects.put(data).hex[:4] == p
    with pytest.raises(AmbiguousId):
        refs.resolve_object(store, p)


def test_cas_update_refuses_stale_expectation(store: Store) -> None:
    a, b = _chain(store, 2)
    refs.set_branch(store, "main", a, expected=None)
    with pytest.raises(RefConflict):
        refs.set_branch(store, "main", b, expected=None)
    with pytest.raises(RefConflict):
        refs.set_branch(store, "main", b, expected=b)
    refs.set_branch(store, "main", b, expected=a)
    assert store.refs.get("refs/heads/main") == b
    log = store.refs.log("refs/heads/main")
    assert [(e.old, e.new) for e in log] == [(None, a), (a, b)]


def test_ref_to_missing_object_is_refused(store: Store) -> None:
    from cas.digest import ObjectId

    with pytest.raises(ObjectNotFound):
        refs.set_branch(store, "main", ObjectId.of(b"never stored"))
    assert store.refs.get("refs/heads/main") is None


def test_tags_never_move_without_force(store: Store) -> None:
    a, b = _chain(store, 2)
    refs.create_tag(store, "v1", a)
    assert refs.resolve(store, "v1") == a
    refs.create_tag(store, "v1", a)  # same target: no-op
    with pytest.raises(TagExists):
        refs.create_tag(store, "v1", b)
    assert refs.resolve(store, "v1") == a
    refs.create_tag(store, "v1", b, force=True)
    assert refs.resolve(store, "v1") == b


def test_an_annotated_tag_pins_a_commit_or_tag_only(store: Store) -> None:
    """A tag of a blob, env or node would be refused by every receiver (docs/format.md)."""
    (a,) = _chain(store, 1)
    blob = store.objects.put(b"just bytes")
    with pytest.raises(BadRefTarget, match=f"cannot tag {blob.short()}: a blob, not a commit or tag"):
        refs.create_tag(store, "v0", blob, message="a tag of a blob")
    assert store.refs.as_dict("refs/tags/") == {}
    inner = refs.create_tag(store, "inner", a, message="of a commit")
    refs.create_tag(store, "outer", inner, message="of a tag")
    assert refs.resolve(store, "outer") == a


def test_annotated_tag_peels_to_commit(store: Store) -> None:
    (a,) = _chain(store, 1)
    tid = refs.create_tag(store, "release/1.4", a, message="release 1.4")
    assert tid != a
    assert refs.resolve_object(store, "release/1.4") == tid
    assert refs.resolve(store, "release/1.4") == a
    with pytest.raises(TagExists):
        refs.create_tag(store, "release/1.4", a, message="again, different message")
