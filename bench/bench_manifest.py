"""Manifest tree: lookup, single-entry insert and diff at 10^4, 10^5 and 10^6 entries.

Each group (one operation at one size) holds a same-run baseline, so pytest-benchmark's
relative column reads as "cost over the baseline":

* lookup:  a Python dict lookup and one raw LMDB get (Store.get of one node) against a
           manifest lookup from a hot working set, and from random keys over the whole
           tree (at 10^6 most leaves are then read from LMDB, not the node cache).
* insert:  one Store.put (one LMDB write txn) against a one-entry manifest update.
* diff:    ten manifest lookups against the diff of two trees differing in ten entries.

``extra_info`` records nodes read/written per operation: they grow with the tree height
(log16 n), not with n. Run: .venv/bin/pytest bench/bench_manifest.py --benchmark-only
(the 10^6 tier builds its tree once, ~1 minute). ``python bench/bench_manifest.py shapes
100000`` compares trie shapes (FANOUT, LEAF_MAX) at one size, in CPU time.
"""

from __future__ import annotations

import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cas import manifest as m
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.objects import Entry, EntryKey
from cas.store import Store

TIERS = [10_000, 100_000, 1_000_000]
ENVS = [ObjectId(bytes([i + 1]) * 32) for i in range(3)]


def make_entries(n: int, seed: int = 0) -> dict[EntryKey, Entry]:
    rng = random.Random(seed)
    return {
        EntryKey(ENVS[i % 3], "inductor", f"f{rng.getrandbits(208):052x}"): Entry(
            ObjectId(rng.randbytes(32)), rng.randrange(1 << 20), None,
            {"producer": "compile", "compile_time_saved_ms": i % 997},
        )
        for i in range(n)
    }


@dataclass
class Tree:
    store: Store
    root: ObjectId
    keys: list[EntryKey]
    data: dict[EntryKey, Entry]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Tree]]:
    built: dict[int, Tree] = {}

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, n: int) -> Tree:
            data = make_entries(n, seed=n)
            store = Store.init(tmp_path_factory.mktemp(f"tree{n}") / "store")
            built[n] = self[n] = Tree(store, m.build(store, data), list(data), data)
            return self[n]

    yield Lazy()
    for t in built.values():
        t.store.close()


def _fresh(i: int) -> tuple[EntryKey, Entry]:
    return EntryKey(ENVS[0], "autotune", f"bench-{i}"), Entry(ObjectId(i.to_bytes(32, "big")), i)


# -- lookup ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", TIERS)
def test_lookup_baseline_dict(benchmark, trees, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"lookup n={n}"
    keys = itertools.cycle(t.keys[:1000])
    benchmark(lambda: t.data.get(next(keys)))


@pytest.mark.parametrize("n", TIERS)
def test_lookup_baseline_lmdb_get(benchmark, trees, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"lookup n={n}"
    nodes = itertools.cycle(list(itertools.islice(m.walk(t.store, t.root), 1000)))
    benchmark(lambda: t.store.objects.get(next(nodes)))


@pytest.mark.parametrize("n", TIERS)
def test_lookup_hot(benchmark, trees, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"lookup n={n}"
    work = t.keys[:1000]  # a process's working set: its own env and model
    for k in work:
        m.lookup(t.store, t.root, k)
    keys = itertools.cycle(work)
    benchmark(lambda: m.lookup(t.store, t.root, next(keys)))
    stats = m.Stats()
    m.lookup(t.store, t.root, work[0], stats=stats)
    benchmark.extra_info["nodes_per_lookup"] = stats.nodes_read


@pytest.mark.parametrize("n", TIERS)
def test_lookup_random_over_all(benchmark, trees, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"lookup n={n}"
    rng = random.Random(1)
    keys = iter(lambda: t.keys[rng.randrange(n)], None)
    benchmark(lambda: m.lookup(t.store, t.root, next(keys)))


# -- insert ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", TIERS)
def test_insert_baseline_store_put(benchmark, trees, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"insert n={n}"
    counter = itertools.count()
    rng = random.Random(n)
    blobs = (rng.randbytes(4096) + next(counter).to_bytes(8, "big") for _ in itertools.count())
    benchmark(lambda: t.store.objects.put(next(blobs), ObjType.BLOB))


@pytest.mark.parametrize("n", TIERS)
def test_insert_one_entry(benchmark, trees, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"insert n={n}"
    counter = itertools.count(n)
    written: list[m.Stats] = []

    def insert() -> None:
        k, e = _fresh(next(counter))
        stats = m.Stats()
        m.update(t.store, t.root, {k: e}, stats=stats)
        written.append(stats)

    benchmark(insert)
    benchmark.extra_info["max_nodes_written"] = max(s.nodes_written for s in written)
    benchmark.extra_info["max_bytes_written"] = max(s.bytes_written for s in written)


# -- build -------------------------------------------------------------------------------------
# Baseline: one write of the very nodes the tree is made of, into a fresh store (the raw
# cost of writing them); the build adds hashing the keys and shaping the trie. This is where
# the "10^6 entries built in under a minute of CPU" figure moved from tests/.

BUILD_TIERS = [100_000, 1_000_000]


@pytest.mark.parametrize("n", BUILD_TIERS)
def test_build_baseline_put_nodes(benchmark, trees, tmp_path, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"build n={n}"
    nodes = [(ObjType.NODE, t.store.objects.get(oid)) for oid in m.walk(t.store, t.root)]
    stores = iter(Store.init(tmp_path / f"raw{i}", durable=False) for i in itertools.count())
    benchmark.pedantic(lambda: next(stores).objects.write(nodes), rounds=3, iterations=1)
    benchmark.extra_info["nodes"] = len(nodes)


@pytest.mark.parametrize("n", BUILD_TIERS)
def test_build(benchmark, trees, tmp_path, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"build n={n}"
    stores = iter(Store.init(tmp_path / f"tree{i}", durable=False) for i in itertools.count())
    benchmark.pedantic(lambda: m.build(next(stores), t.data), rounds=3, iterations=1)


# -- diff --------------------------------------------------------------------------------------

K = 10


@pytest.mark.parametrize("n", TIERS)
def test_diff_baseline_k_lookups(benchmark, trees, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"diff k={K} n={n}"
    keys = t.keys[-K:]
    benchmark(lambda: [m.lookup(t.store, t.root, k) for k in keys])


@pytest.mark.parametrize("n", TIERS)
def test_diff_k_changes(benchmark, trees, n: int) -> None:  # type: ignore[no-untyped-def]
    t = trees[n]
    benchmark.group = f"diff k={K} n={n}"
    other = m.update(t.store, t.root, {k: _fresh(i)[1] for i, k in enumerate(t.keys[-K:])})
    benchmark(lambda: list(m.diff(t.store, t.root, other)))
    stats = m.Stats()
    assert len(list(m.diff(t.store, t.root, other, stats=stats))) == K
    benchmark.extra_info["nodes_read"] = stats.nodes_read


# -- shape comparison (not a pytest benchmark) -------------------------------------------------

SHAPES = [(4, 32), (4, 64), (5, 64), (5, 128)]  # (bits per level, LEAF_MAX)


def compare_shapes(n: int) -> None:
    """Print build cost, writes per insert, lookup time and diff reads for each shape."""
    data = make_entries(n, seed=n)
    keys = list(data)
    saved = m.BITS, m.LEAF_MAX
    try:
        for bits, leaf_max in SHAPES:
            _set_shape(bits, leaf_max)
            with tempfile.TemporaryDirectory() as tmp, Store.init(tmp) as store:
                print(_measure_shape(store, data, keys), flush=True)
    finally:
        _set_shape(*saved)


def _set_shape(bits: int, leaf_max: int) -> None:
    """Rebind the shape constants in every module of cas.manifest that holds them."""
    shape = {"BITS": bits, "FANOUT": 1 << bits, "_MASK": (1 << bits) - 1, "MAX_DEPTH": 256 // bits,
             "LEAF_MAX": leaf_max}
    for module in (m, m.node, m.tree, m.api):
        for name, value in shape.items():
            if hasattr(module, name):
                setattr(module, name, value)


def _measure_shape(store: Store, data: dict[EntryKey, Entry], keys: list[EntryKey]) -> str:
    built = m.Stats()
    t0 = time.process_time()
    root = m.build(store, data, stats=built)
    build_s = time.process_time() - t0
    writes = []
    for i in range(100):
        w = m.Stats()
        m.update(store, root, dict([_fresh(i)]), stats=w)
        writes.append(w)
    hot = keys[:500]
    for k in hot:
        m.lookup(store, root, k)
    times = []
    for k in hot:
        t0 = time.process_time()
        m.lookup(store, root, k)
        times.append(time.process_time() - t0)
    path = m.Stats()
    m.lookup(store, root, hot[0], stats=path)
    other = m.update(store, root, {k: _fresh(i)[1] for i, k in enumerate(keys[-K:])})
    diffed = m.Stats()
    list(m.diff(store, root, other, stats=diffed))
    return (
        f"n={len(keys)} fanout={m.FANOUT} leaf_max={m.LEAF_MAX}: build {build_s:.1f}s cpu, "
        f"{built.nodes_written} nodes, {built.bytes_written / 1e6:.0f} MB; insert: max "
        f"{max(w.nodes_written for w in writes)} nodes, mean "
        f"{statistics.mean(w.bytes_written for w in writes):.0f} B, max "
        f"{max(w.bytes_written for w in writes)} B; lookup {statistics.median(times) * 1e6:.1f} us "
        f"cpu, {path.nodes_read} nodes; diff of {K}: {diffed.nodes_read} nodes read"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "shapes":
        compare_shapes(int(sys.argv[2]))
    else:
        sys.exit("usage: python bench/bench_manifest.py shapes N")
