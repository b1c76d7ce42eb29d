"""The manifest tree on a real LMDB store: API behaviour, canonical shape, errors, merge.

The acceptance criteria at 10^6 entries (writes per change, lookup time, diff cost) are
the ``slow`` tests at the end; they share one 10^6-entry store built once per module.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from cas import manifest as m
from cas.codec import ObjType, encode
from cas.digest import ObjectId
from cas.errors import CorruptObject, ObjectNotFound, UsageError
from cas.manifest.node import slot_of
from cas.objects import Entry, EntryKey, ManifestNode
from cas.store import Store
from cas.sync.merge import RULES

ENVS = [ObjectId(bytes([i + 1]) * 32) for i in range(3)]


def make_entries(n: int, seed: int = 0, kind: str = "inductor") -> dict[EntryKey, Entry]:
    """n realistic entries: torch-like hex keys, 3 envs, small metadata."""
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        key = EntryKey(ENVS[i % 3], kind, f"f{rng.getrandbits(208):052x}", "" if i % 7 else "dyn")
        out[key] = Entry(
            ObjectId(rng.randbytes(32)),
            rng.randrange(1 << 20),
            None if i % 5 else "s0 > 2",
            {"producer": "compile", "compile_time_saved_ms": i % 997},
        )
    return out


def other_entry(seed: int, **meta: object) -> Entry:
    rng = random.Random(seed)
    return Entry(ObjectId(rng.randbytes(32)), rng.randrange(1000), None, meta)


def node(store: Store, oid: ObjectId) -> ManifestNode:
    got = store.objects.get_typed(oid)
    assert got is not None and got[0] == ObjType.NODE
    return ManifestNode.decode(got[1])


def height(store: Store, root: ObjectId) -> int:
    """Levels on the longest root-to-leaf path."""
    n = node(store, root)
    return 1 + max((height(store, c) for _, c in n.children), default=0)


# -- encoding -------------------------------------------------------------------------------


def test_key_hash_is_blake3_of_the_encoded_key() -> None:
    key = EntryKey(ENVS[0], "autotune", "k" * 40, "v")
    assert m.key_hash(key) == blake3.blake3(key.encode()).digest()


def test_node_encoding_is_the_canonical_codec_encoding() -> None:
    entries = list(make_entries(3).items())
    entries[0] = (entries[0][0], Entry(entries[0][1].blob, 1, None, {"z": 1, "a": [1, 2.5], "é": {"b": 1, "a": 2}}))
    leaf = ManifestNode(2, 3, entries=tuple(entries))
    rows = [
        [k.env.raw, k.kind, k.key, k.variant, e.blob.raw, e.size, e.guards, dict(e.meta)]
        for k, e in entries
    ]
    assert leaf.encode() == encode(ObjType.NODE, {"d": 2, "n": 3, "e": rows})
    inner = ManifestNode(1, 99, children=((3, ENVS[0]), (15, ENVS[1])))
    assert inner.encode() == encode(ObjType.NODE, {"n": 99, "d": 1, "c": [[3, ENVS[0].raw], [15, ENVS[1].raw]]})
    assert ManifestNode.decode(leaf.encode()) == leaf
    assert ManifestNode.decode(inner.encode()) == inner


def test_empty_manifest_is_a_stored_constant(store: Store) -> None:
    assert m.EMPTY == ManifestNode(0, 0).id
    assert not store.objects.has(m.EMPTY)
    assert m.build(store, {}) == m.EMPTY
    assert store.objects.has(m.EMPTY)
    assert m.count(store, m.EMPTY) == 0
    assert list(m.entries(store, m.EMPTY)) == []
    assert m.lookup(store, m.EMPTY, EntryKey(ENVS[0], "inductor", "x")) is None


# -- build, lookup, update ------------------------------------------------------------------


def test_build_lookup_and_entries_round_trip(store: Store) -> None:
    data = make_entries(3000)
    root = m.build(store, data)
    assert m.count(store, root) == 3000
    assert dict(m.entries(store, root)) == data
    for key, entry in list(data.items())[::97]:
        assert m.lookup(store, root, key) == entry
    absent = EntryKey(ENVS[0], "inductor", "not-there")
    assert m.lookup(store, root, absent) is None
    # same key, other variant or env: a different key, a miss
    some = next(iter(data))
    assert m.lookup(store, root, EntryKey(some.env, some.kind, some.key, "other")) is None
    assert m.lookup(store, root, EntryKey(ENVS[2] if some.env != ENVS[2] else ENVS[0], some.kind, some.key, some.variant)) is None
    # an iterable with a repeated key: the last entry wins, as in a dict
    assert m.build(store, [*data.items(), (some, other_entry(9))]) == m.update(store, root, {some: other_entry(9)})


def test_every_node_obeys_the_canonical_shape(store: Store) -> None:
    root = m.build(store, make_entries(5000))

    def check(oid: ObjectId, depth: int, prefix: list[int]) -> int:
        n = node(store, oid)
        assert n.depth == depth
        if n.is_leaf:
            assert n.count == len(n.entries) <= m.LEAF_MAX
            hs = [m.key_hash(k) for k, _ in n.entries]
            assert hs == sorted(hs)
            for h in hs:  # every entry sits under the slots its h names
                assert [slot_of(h, d) for d in range(depth)] == prefix
            return n.count
        assert n.count > m.LEAF_MAX
        slots = [s for s, _ in n.children]
        assert slots == sorted(set(slots)) and all(0 <= s < m.FANOUT for s in slots)
        total = sum(check(c, depth + 1, [*prefix, s]) for s, c in n.children)
        assert total == n.count
        return total

    assert check(root, 0, []) == 5000


def test_update_inserts_changes_and_removes(store: Store) -> None:
    data = make_entries(2000)
    root = m.build(store, data)
    keys = list(data)
    new_key = EntryKey(ENVS[1], "autotune", "mm-128x128")
    changed = other_entry(1, time_ms=0.5)
    root2 = m.update(store, root, {new_key: changed, keys[0]: changed, keys[1]: None})
    assert m.lookup(store, root2, new_key) == changed
    assert m.lookup(store, root2, keys[0]) == changed
    assert m.lookup(store, root2, keys[1]) is None
    assert m.count(store, root2) == 2000
    # the old root is untouched (immutability)
    assert m.lookup(store, root, keys[1]) == data[keys[1]]
    assert m.lookup(store, root, new_key) is None


def test_noop_update_returns_the_same_root_and_writes_nothing(store: Store) -> None:
    data = make_entries(500)
    root = m.build(store, data)
    key = next(iter(data))
    stats = m.Stats()
    before = store.info()["objects"]
    same = m.update(
        store, root, {key: data[key], EntryKey(ENVS[0], "inductor", "absent"): None}, stats=stats
    )
    assert same == root
    assert stats.nodes_written == 0 and store.info()["objects"] == before
    assert m.update(store, root, {}) == root


def test_shrinking_below_leaf_max_collapses_to_the_built_shape(store: Store) -> None:
    data = make_entries(400)
    root = m.build(store, data)
    assert not node(store, root).is_leaf
    keys = list(data)
    keep = keys[: m.LEAF_MAX - 3]
    shrunk = m.update(store, root, {k: None for k in keys[len(keep) :]})
    assert node(store, shrunk).is_leaf
    assert shrunk == m.build(store, {k: data[k] for k in keep})
    emptied = m.update(store, shrunk, {k: None for k in keep})
    assert emptied == m.EMPTY and store.objects.has(m.EMPTY)


def test_one_update_writes_each_new_node_once_children_first(store: Store) -> None:
    data = make_entries(3000)
    root = m.build(store, data)
    stats = m.Stats()
    before = store.info()["objects"]
    root2 = m.update(store, root, {EntryKey(ENVS[0], "pgo", "p1"): other_entry(2)}, stats=stats)
    # the counters agree with what the store gained, and it is one node per level
    assert store.info()["objects"] - before == stats.nodes_written == height(store, root2)
    fresh = list(m.new_nodes(store, root, root2))
    assert len(fresh) == stats.nodes_written and fresh[-1] == root2


# -- errors -----------------------------------------------------------------------------------


def test_missing_node_is_object_not_found(store: Store, tmp_path: Path) -> None:
    root = m.build(store, make_entries(300))
    with Store.init(tmp_path / "other") as other:
        # a root known to another store only: the cache of `store` must not leak into it
        with pytest.raises(ObjectNotFound, match="missing from the store"):
            m.lookup(other, root, EntryKey(ENVS[0], "inductor", "x"))
    child = node(store, root).children[0][1]
    store.maintenance.delete([child])
    with Store(store.path) as again:  # a new handle: nothing cached
        with pytest.raises(ObjectNotFound, match=child.short()):
            list(m.entries(again, root))


def test_id_that_is_not_a_node_is_corrupt(store: Store) -> None:
    blob = store.objects.put(b"just bytes")
    with pytest.raises(CorruptObject, match="not a manifest node"):
        m.count(store, blob)
    bad = encode(ObjType.NODE, {"d": 0, "n": 2, "e": [["not", "a", "row"]]})
    bad_id = store.objects.put(bad, ObjType.NODE)
    with pytest.raises(CorruptObject):
        list(m.entries(store, bad_id))
    lying = encode(ObjType.NODE, {"d": 0, "n": 5, "c": [[1, ENVS[0].raw]]})  # count <= LEAF_MAX
    with pytest.raises(CorruptObject, match="canonical"):
        m.count(store, store.objects.put(lying, ObjType.NODE))


def test_bad_entries_are_usage_errors(store: Store) -> None:
    key = EntryKey(ENVS[0], "inductor", "k")
    with pytest.raises(UsageError, match="size"):
        m.build(store, {key: Entry(ENVS[1], -1)})
    with pytest.raises(UsageError, match="size"):
        m.update(store, m.EMPTY, {key: Entry(ENVS[1], 1 << 64)})
    with pytest.raises(UsageError, match="metadata"):
        m.build(store, {key: Entry(ENVS[1], 1, None, {"x": object()})})
    with pytest.raises(UsageError, match="text"):
        m.build(store, {EntryKey(ENVS[0], "inductor", 5): Entry(ENVS[1], 1)})  # type: ignore[arg-type]


# -- diff, walk, new_nodes, select ------------------------------------------------------------


def test_diff_reports_added_removed_and_changed(store: Store) -> None:
    data = make_entries(2500)
    a = m.build(store, data)
    keys = list(data)
    added = EntryKey(ENVS[2], "autotune", "new")
    e = other_entry(3)
    b = m.update(store, a, {added: e, keys[5]: None, keys[6]: e})
    got = {c.key: (c.old, c.new) for c in m.diff(store, a, b)}
    assert got == {added: (None, e), keys[5]: (data[keys[5]], None), keys[6]: (data[keys[6]], e)}
    back = {c.key: (c.old, c.new) for c in m.diff(store, b, a)}
    assert back == {k: (new, old) for k, (old, new) in got.items()}
    assert list(m.diff(store, a, a)) == []
    assert len(list(m.diff(store, m.EMPTY, a))) == 2500


def test_diff_sees_metadata_changes_that_compare_equal(store: Store) -> None:
    key = EntryKey(ENVS[0], "autotune", "k")
    a = m.build(store, {key: other_entry(1, time_ms=1)})
    b = m.build(store, {key: other_entry(1, time_ms=1.0)})
    assert a != b
    assert [c.key for c in m.diff(store, a, b)] == [key]


def test_walk_lists_every_node_children_before_parents(store: Store) -> None:
    root = m.build(store, make_entries(3000))
    order = list(m.walk(store, root))
    nodes = {r.oid for r in store.objects.iter_records() if r.type == ObjType.NODE}
    assert set(order) == nodes and len(order) == len(nodes)
    seen: set[ObjectId] = set()
    for oid in order:
        assert all(c in seen for _, c in node(store, oid).children)
        seen.add(oid)
    assert order[-1] == root


def test_new_nodes_is_exactly_the_set_difference(store: Store) -> None:
    data = make_entries(3000)
    a = m.build(store, data)
    changes: dict[EntryKey, Entry | None] = {k: None for k in list(data)[:40]}
    changes.update({EntryKey(ENVS[0], "pgo", f"p{i}"): other_entry(i) for i in range(30)})
    b = m.update(store, a, changes)
    fresh = list(m.new_nodes(store, a, b))
    assert set(fresh) == set(m.walk(store, b)) - set(m.walk(store, a))
    assert len(fresh) == len(set(fresh))
    assert list(m.new_nodes(store, None, b)) == list(m.walk(store, b))
    assert list(m.new_nodes(store, b, b)) == []


def test_select_keeps_only_the_given_envs(store: Store) -> None:
    data = make_entries(3000)
    root = m.build(store, data)
    sub = m.select(store, root, [ENVS[1]])
    want = {k: e for k, e in data.items() if k.env == ENVS[1]}
    assert dict(m.entries(store, sub)) == want
    assert sub == m.build(store, want)  # history independence: same set, same id
    assert m.select(store, root, ENVS) == root
    assert m.select(store, root, []) == m.EMPTY


# -- merge ------------------------------------------------------------------------------------


@pytest.fixture
def base(store: Store) -> tuple[ObjectId, dict[EntryKey, Entry]]:
    data = make_entries(400)
    return m.build(store, data), data


def test_merge_is_the_union_of_both_sides(store: Store, base: tuple[ObjectId, dict[EntryKey, Entry]]) -> None:
    root, data = base
    keys = list(data)
    ka, kb = EntryKey(ENVS[0], "pgo", "a"), EntryKey(ENVS[0], "pgo", "b")
    ours = m.update(store, root, {ka: other_entry(1), keys[0]: None})
    theirs = m.update(store, root, {kb: other_entry(2), keys[1]: other_entry(3), keys[0]: None})
    res = m.merge(store, root, ours, theirs)
    assert res.conflicts == [] and res.resolved == []
    want = dict(data)
    del want[keys[0]]
    want.update({ka: other_entry(1), kb: other_entry(2), keys[1]: other_entry(3)})
    assert res.root == m.build(store, want)
    assert m.merge(store, root, theirs, ours).root == res.root
    assert m.merge(store, root, root, theirs).root == theirs
    assert m.merge(store, root, ours, root).root == ours


def test_autotune_conflicts_go_to_the_faster_entry(store: Store, base: tuple[ObjectId, dict[EntryKey, Entry]]) -> None:
    root, _ = base
    k1, k2, k3 = (EntryKey(ENVS[0], "autotune_record", name) for name in ("mm", "bmm", "addmm"))
    slow, fast = other_entry(1, time_ms=2.0), other_entry(2, time_ms=0.7)
    alias = other_entry(3, timing_ms=0.1)
    ours = m.update(store, root, {k1: slow, k2: fast, k3: slow})
    theirs = m.update(store, root, {k1: fast, k2: slow, k3: alias})
    res = m.merge(store, root, ours, theirs, RULES)
    assert res.conflicts == []
    assert sorted(res.resolved, key=lambda r: r[0].key) == [
        (k3, alias, "faster"), (k2, fast, "faster"), (k1, fast, "faster")
    ]
    assert [m.lookup(store, res.root, k) for k in (k1, k2, k3)] == [fast, fast, alias]
    # the manifest itself names no kind: without the branch rules, ours stands
    plain = m.merge(store, root, ours, theirs)
    assert {(k, rule) for k, _, rule in plain.resolved} == {(k, "ours") for k in (k1, k2, k3)}


def test_equal_autotune_times_go_to_the_earlier_measurement(
    store: Store, base: tuple[ObjectId, dict[EntryKey, Entry]]
) -> None:
    root, _ = base
    key = EntryKey(ENVS[0], "autotune_record", "mm")
    early, late = other_entry(1, time_ms=1.0, measured_at=100.0), other_entry(2, time_ms=1.0, measured_at=200.0)
    a, b = m.update(store, root, {key: late}), m.update(store, root, {key: early})
    assert m.lookup(store, m.merge(store, root, a, b, RULES).root, key) == early
    assert m.lookup(store, m.merge(store, root, b, a, RULES).root, key) == early


def test_raw_autotune_files_keep_ours(store: Store, base: tuple[ObjectId, dict[EntryKey, Entry]]) -> None:
    root, _ = base
    key = EntryKey(ENVS[0], "gemm_timing", "system-hash")
    mine, yours = other_entry(1, time_ms=2.0), other_entry(2, time_ms=0.5)
    res = m.merge(store, root, m.update(store, root, {key: mine}), m.update(store, root, {key: yours}), RULES)
    assert res.resolved == [(key, mine, "ours")]


def test_other_kinds_keep_ours_and_say_so(store: Store, base: tuple[ObjectId, dict[EntryKey, Entry]]) -> None:
    root, data = base
    key = next(iter(data))
    mine, yours = other_entry(1), other_entry(2)
    res = m.merge(store, root, m.update(store, root, {key: mine}), m.update(store, root, {key: yours}))
    assert res.resolved == [(key, mine, "ours")] and res.conflicts == []
    assert m.lookup(store, res.root, key) == mine
    # a removal on our side against a change on theirs: ours (the removal) stands
    res = m.merge(store, root, m.update(store, root, {key: None}), m.update(store, root, {key: yours}))
    assert res.resolved == [(key, None, "ours")]
    assert m.lookup(store, res.root, key) is None


def test_unresolved_conflicts_are_reported_and_keep_ours(store: Store, base: tuple[ObjectId, dict[EntryKey, Entry]]) -> None:
    root, data = base
    key, other = list(data)[:2]
    mine, yours = other_entry(1), other_entry(2)
    added = EntryKey(ENVS[0], "pgo", "theirs-only")
    ours = m.update(store, root, {key: mine})
    theirs = m.update(store, root, {key: yours, added: yours})
    res = m.merge(store, root, ours, theirs, rules={})
    assert res.conflicts == [(key, mine, yours)] and res.resolved == []
    assert m.lookup(store, res.root, key) == mine
    assert m.lookup(store, res.root, added) == yours  # the rest of theirs is merged
    undecided = m.Rule("never", lambda k, o, t: None)
    assert m.merge(store, root, ours, theirs, rules={"*": undecided}).conflicts == [(key, mine, yours)]


# -- structural laws on a big tree (10^5 entries; 10^6, and every time figure, in bench/) ------

BIG = 100_000


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, ObjectId, dict[EntryKey, Entry]]]:
    data = make_entries(BIG, seed=7)
    store = Store.init(tmp_path_factory.mktemp("big") / "store", durable=False)
    try:
        yield store, m.build(store, data), data
    finally:
        store.close()


Big = tuple[Store, ObjectId, dict[EntryKey, Entry]]


def test_big_build_is_complete(big: Big) -> None:
    store, root, data = big
    assert m.count(store, root) == BIG
    assert list(m.check(store, root)) == []
    rng = random.Random(5)
    for k in rng.sample(list(data), 2000):
        assert m.lookup(store, root, k) == data[k]


def test_big_single_changes_write_at_most_8_nodes_and_64_kib(big: Big) -> None:
    store, root, data = big
    rng = random.Random(11)
    keys = list(data)
    worst_nodes = worst_bytes = 0
    for i in range(60):
        if i % 2:
            change = {rng.choice(keys): other_entry(i, time_ms=i)}
        else:
            change = {EntryKey(rng.choice(ENVS), "autotune", f"new-{i}"): other_entry(i)}
        stats = m.Stats()
        before = store.info()["objects"]
        new_root = m.update(store, root, change, stats=stats)
        assert store.info()["objects"] - before == stats.nodes_written
        assert m.lookup(store, new_root, next(iter(change))) == next(iter(change.values()))
        worst_nodes = max(worst_nodes, stats.nodes_written)
        worst_bytes = max(worst_bytes, stats.bytes_written)
    assert worst_nodes <= 8
    assert worst_bytes <= 64 * 1024


def test_big_diff_reads_k_log_n_nodes(big: Big) -> None:
    store, root, data = big
    rng = random.Random(9)
    keys = list(data)
    for k in (1, 10, 100):
        changes = {key: other_entry(j) for j, key in enumerate(rng.sample(keys, k))}
        depth = 0  # levels on the changed keys' paths, measured by lookups
        for key in changes:
            looked = m.Stats()
            m.lookup(store, root, key, stats=looked)
            depth = max(depth, looked.nodes_read)
        assert depth <= 6
        other = m.update(store, root, changes)
        stats = m.Stats()
        assert len(list(m.diff(store, root, other, stats=stats))) == k
        assert stats.nodes_read <= k * depth * 2 + 2, (k, stats.nodes_read)
        stats = m.Stats()
        res = m.merge(store, root, other, root, stats=stats)
        assert res.root == other and stats.nodes_read == 0


def test_big_build_equals_removals_then_updates(big: Big) -> None:
    store, root, data = big
    keys = list(data)
    rng = random.Random(3)
    late = rng.sample(keys, 300)
    partial = m.update(store, root, {k: None for k in late})
    assert m.count(store, partial) == BIG - 300
    for i in range(0, 300, 50):  # re-added by many updates, in another order
        partial = m.update(store, partial, {k: data[k] for k in late[i : i + 50][::-1]})
    assert partial == root


def test_check_finds_nothing_in_built_trees_and_names_broken_shapes(store: Store) -> None:
    assert list(m.check(store, m.build(store, make_entries(3000)))) == []
    assert list(m.check(store, m.build(store, {}))) == []
    pairs = sorted(make_entries(70).items(), key=lambda kv: m.key_hash(kv[0]))
    deep = store.objects.put_object(ManifestNode(1, 2, entries=tuple(pairs[:2])))
    assert [p.split(" says")[1] for p in m.check(store, deep)] == [" depth 1, sits at depth 0"]
    unsorted = store.objects.put_object(ManifestNode(0, 2, entries=(pairs[1], pairs[0])))
    assert any("not sorted" in p for p in m.check(store, unsorted))
    fat = store.objects.put_object(ManifestNode(1, 70, entries=tuple(pairs)))
    lying = store.objects.put_object(ManifestNode(0, 100, children=((0, fat),)))
    found = " | ".join(m.check(store, lying))
    assert "children hold 70" in found and "belong elsewhere" in found and "holds 70 entries" in found


def test_check_entry_refuses_what_update_could_not_store(store: Store) -> None:
    from cas.errors import BadEntryKey

    good = EntryKey(ENVS[0], "inductor", "fgood", "")
    blob = ObjectId.of(b"x")
    m.check_entry(good, Entry(blob, 1, None, {"time_taken_ms": 7}))
    with pytest.raises(BadEntryKey, match="grammar"):
        m.check_entry(EntryKey(ENVS[0], "inductor", "../../.bashrc", ""), Entry(blob, 1))
    huge = Entry(blob, 1, None, {"time_taken_ms": 10**30})
    with pytest.raises(UsageError, match="cannot be stored"):
        m.check_entry(good, huge)
    for meta in ({"t": -(2**63) - 1}, {"t": 2**64}, {"nested": {"t": [1, 10**30]}}, {"t": {1: 2}}):
        with pytest.raises(UsageError):
            m.check_entry(good, Entry(blob, 1, None, meta))
    # What it lets through, a node can hold.
    edge = Entry(blob, 1, None, {"a": -(2**63), "b": 2**64 - 1, "c": True, "d": 1.5, "e": None, "f": {"g": [1]}})
    m.check_entry(good, edge)
    assert m.lookup(store, m.build(store, {good: edge}), good) == edge
