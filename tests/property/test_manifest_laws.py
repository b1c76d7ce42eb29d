"""Laws of the manifest tree, checked by derandomized Hypothesis on a real store.

Sets are drawn from a small universe of keys so that inserts, removals and conflicts
collide often, and reach a few hundred entries so that trees have inner nodes
(LEAF_MAX is 64).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import manifest as m
from cas.digest import ObjectId
from cas.objects import Entry, EntryKey, ManifestNode
from cas.store import Store

ENVS = [ObjectId(bytes([i + 1]) * 32) for i in range(3)]
KINDS = ["inductor", "autotune", "pgo"]
LAWS = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Every key and entry a law can meet, listed once: drawing one is drawing one index (two
# draws per entry instead of a dozen), which keeps hundreds-of-entries examples cheap.
# The key's number is the slowest-varying part, so small indices still span every env,
# kind and variant, and a shrunk example stays a small one.
KEY_UNIVERSE = [
    EntryKey(env, kind, f"key-{i}", variant)
    for i in range(401) for env in ENVS for kind in KINDS for variant in ("", "dyn")
]
ENTRY_UNIVERSE = [
    Entry(ObjectId(bytes([0x40 + b]) * 32), size, guards, meta)
    for b in range(4) for size in range(11) for guards in (None, "s0 > 1")
    for meta in [{}, *({"time_ms": t} for t in range(1, 6)), {"producer": "ci"},
                 *({"time_ms": t, "producer": "ci"} for t in range(1, 6))]
]
keys = st.integers(0, len(KEY_UNIVERSE) - 1).map(KEY_UNIVERSE.__getitem__)
entries_ = st.integers(0, len(ENTRY_UNIVERSE) - 1).map(ENTRY_UNIVERSE.__getitem__)
# Sizes drawn explicitly: left alone, Hypothesis mostly draws small maps (all one leaf).
manifests = st.integers(0, 220).flatmap(
    lambda n: st.dictionaries(keys, entries_, min_size=n, max_size=n)
)
changesets = st.dictionaries(keys, st.none() | entries_, max_size=60)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    # One store for every example: content addressing makes sharing it harmless.
    s = Store.init(tmp_path_factory.mktemp("laws") / "store")
    try:
        yield s
    finally:
        s.close()


def apply(data: dict[EntryKey, Entry], changes: dict[EntryKey, Entry | None]) -> dict[EntryKey, Entry]:
    out = dict(data)
    for k, e in changes.items():
        if e is None:
            out.pop(k, None)
        else:
            out[k] = e
    return out


@LAWS
@given(data=manifests, steps=st.lists(changesets, max_size=4), order=st.randoms())
def test_same_set_same_root_whatever_the_history(
    store: Store, data: dict[EntryKey, Entry], steps: list[dict[EntryKey, Entry | None]], order: object
) -> None:
    items = list(data.items())
    order.shuffle(items)  # type: ignore[attr-defined]
    root = m.build(store, items)
    assert root == m.build(store, data)
    # inserted in shuffled batches of random sizes (each batch is one update)
    cuts = sorted(order.randint(0, len(items)) for _ in range(5))  # type: ignore[attr-defined]
    piecewise = m.EMPTY
    for lo, hi in zip([0, *cuts], [*cuts, len(items)], strict=True):
        piecewise = m.update(store, piecewise, dict(items[lo:hi]))
    assert piecewise == root
    # then a history of mixed inserts and removals ends where a fresh build of the result does
    final = data
    for changes in steps:
        root = m.update(store, root, changes)
        final = apply(final, changes)
    assert root == m.build(store, final)
    assert dict(m.entries(store, root)) == final
    assert m.count(store, root) == len(final)


@LAWS
@given(data=manifests, changes=changesets)
def test_diff_is_exactly_what_changed_and_replays(
    store: Store, data: dict[EntryKey, Entry], changes: dict[EntryKey, Entry | None]
) -> None:
    a = m.build(store, data)
    b = m.update(store, a, changes)
    after = apply(data, changes)
    got = list(m.diff(store, a, b))
    want = {k for k in data.keys() | after.keys() if data.get(k) != after.get(k)}
    assert {c.key for c in got} == want and len(got) == len(want)
    for c in got:
        assert (c.old, c.new) == (data.get(c.key), after.get(c.key))
    assert m.update(store, a, {c.key: c.new for c in got}) == b
    assert m.update(store, b, {c.key: c.old for c in got}) == a
    assert set(m.new_nodes(store, a, b)) == set(m.walk(store, b)) - set(m.walk(store, a))


@LAWS
@given(base=manifests, mine=changesets, yours=changesets)
def test_merge_unions_changes_and_reports_exactly_the_conflicts(
    store: Store,
    base: dict[EntryKey, Entry],
    mine: dict[EntryKey, Entry | None],
    yours: dict[EntryKey, Entry | None],
) -> None:
    b = m.build(store, base)
    ours, theirs = m.update(store, b, mine), m.update(store, b, yours)
    after_ours, after_theirs = apply(base, mine), apply(base, yours)

    def changed(after: dict[EntryKey, Entry]) -> set[EntryKey]:
        return {k for k in base.keys() | after.keys() if base.get(k) != after.get(k)}

    both = {
        k for k in changed(after_ours) & changed(after_theirs) if after_ours.get(k) != after_theirs.get(k)
    }
    res = m.merge(store, b, ours, theirs, rules={})
    assert {k for k, _, _ in res.conflicts} == both and res.resolved == []
    # unresolved keys keep ours; everything else is the union of both sides' changes
    want = apply(after_ours, {k: after_theirs.get(k) for k in changed(after_theirs) - both})
    assert dict(m.entries(store, res.root)) == want
    assert res.root == m.build(store, want)
    # with the default rules nothing is left unresolved, and without conflicts the
    # merge is symmetric
    assert m.merge(store, b, ours, theirs).conflicts == []
    if not both:
        assert m.merge(store, b, theirs, ours).root == res.root
    assert m.merge(store, b, ours, ours).root == ours


@LAWS
@given(data=st.lists(st.tuples(keys, entries_), max_size=20), depth=st.integers(0, 63))
def test_leaf_nodes_round_trip_through_their_encoding(
    data: list[tuple[EntryKey, Entry]], depth: int
) -> None:
    node = ManifestNode(depth, len(data), entries=tuple(data))
    assert ManifestNode.decode(node.encode()) == node
    assert ManifestNode.decode(node.encode()).encode() == node.encode()


@LAWS
@given(data=manifests, envs=st.sets(st.sampled_from(ENVS)))
def test_select_equals_a_build_of_the_selected_entries(
    store: Store, data: dict[EntryKey, Entry], envs: set[ObjectId]
) -> None:
    root = m.build(store, data)
    want = {k: e for k, e in data.items() if k.env in envs}
    sub = m.select(store, root, envs)
    assert sub == m.build(store, want)
    assert dict(m.entries(store, sub)) == want
