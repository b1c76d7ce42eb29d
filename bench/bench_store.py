"""Store throughput against raw py-lmdb, measured in the same run.

Each case times cas and its baseline in alternating rounds (so machine load hits both
alike), reports the medians and their ratio in ``benchmark.extra_info``, and asserts the
goal with a margin for noise:

* get of 1 KiB and 100 KiB blobs: ``Store.get`` vs one py-lmdb read txn + ``get`` per
  object (what any independent lookup costs); goal >= 0.85x the raw throughput for
  1 KiB, 0.8x for 100 KiB, and 0.6x for a compressible 100 KiB blob read again (the
  store's BlobCache keeps it decoded; raw reads the uncompressed bytes).
* batched put of 1 KiB, 100 KiB and 16 MiB blobs: ``Store.write`` vs one py-lmdb write
  txn that puts the same bytes under their BLAKE3 digest; goal >= 0.7x, both durable
  (fsync per commit, as users run them). The same comparison with fsync off on both sides
  is reported as ``no_fsync_ratio_of_raw_throughput`` (cas's CPU cost per object).

Data is random (incompressible) unless the case says ``compressible``; compressible
cases are reported, not asserted (cas then does more CPU work and writes fewer bytes).

Run: ``.venv/bin/pytest bench/bench_store.py --benchmark-only
--benchmark-columns=min,median,max,rounds`` (results: docs/robustness.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import lmdb
import pytest

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.store import Store

#: Goals of test_get by case id (None: reported, not asserted).
GET_GOALS = {"1KiB": 0.85, "100KiB": 0.8, "1KiB-compressible": None, "100KiB-compressible": 0.6}
PUT_GOAL = 0.7
#: Allowance for noise on a shared machine: assert goal * MARGIN.
MARGIN = 0.85
ROUNDS = 11
GET_ROUNDS = 21


def payloads(size: int, count: int, compressible: bool, seed: int) -> list[bytes]:
    if not compressible:
        return [os.urandom(size) for _ in range(count)]
    # text-like artifacts: repetitive source with some variation, ~4x with zstd
    line = b"    tmp%d = tl.load(in_ptr0 + (x0), xmask, eviction_policy='evict_last')\n"
    out = []
    for i in range(count):
        body = b"".join(line % ((seed * 7919 + i * 31 + j) % 1000) for j in range(size // 60 + 1))
        out.append(body[:size])
    return out


def interleaved(ours: Callable[[int], None], raw: Callable[[int], None], rounds: int) -> tuple[float, float]:
    """Fastest seconds of ``ours(r)`` and ``raw(r)`` over alternating rounds.

    The minimum, not the median: on a shared machine other processes only ever add
    time, so the fastest round is the steadiest estimate of what the code itself costs.
    """
    a, b = [], []
    for r in range(rounds):
        for fn, acc in ((raw, b), (ours, a)) if r % 2 else ((ours, a), (raw, b)):
            t = time.perf_counter()
            fn(r)
            acc.append(time.perf_counter() - t)
    return min(a), min(b)


def open_pair(where: Path, durable: bool) -> tuple[Store, lmdb.Environment]:
    store = Store.init(where / "cas", durable=durable)
    raw = lmdb.open(
        str(where / "raw"), map_size=8 << 30, max_dbs=2, readahead=False, meminit=False,
        sync=durable, metasync=durable,
    )
    return store, raw


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, lmdb.Environment]]:
    store, raw = open_pair(tmp_path, durable=True)
    try:
        yield store, raw
    finally:
        store.close()
        raw.close()


def report(benchmark: Any, ours: float, raw: float, goal: float | None, unit: int, what: str) -> float:
    ratio = raw / ours
    benchmark.extra_info.update(
        what=what,
        cas_best_s=round(ours, 6),
        raw_best_s=round(raw, 6),
        ratio_of_raw_throughput=round(ratio, 3),
        goal=goal,
        cas_MBps=round(unit / ours / 1e6, 1),
        raw_MBps=round(unit / raw / 1e6, 1),
    )
    if goal is not None:
        assert ratio >= goal * MARGIN, f"{what}: {ratio:.2f}x of raw, goal {goal}x"
    return ratio


@pytest.mark.parametrize(
    ("size", "count", "compressible"),
    [(1 << 10, 2000, False), (100 << 10, 200, False), (1 << 10, 2000, True), (100 << 10, 200, True)],
    ids=["1KiB", "100KiB", "1KiB-compressible", "100KiB-compressible"],
)
def test_get(benchmark: Any, stores: tuple[Store, lmdb.Environment], size: int, count: int, compressible: bool) -> None:
    store, env = stores
    data = payloads(size, count, compressible, 1)
    ids = store.objects.write([(ObjType.BLOB, d) for d in data])
    # The baseline reads the same layout as the store: a named database (LMDB looks a
    # named db up again in every new txn: ~1 us of each small get). The main-db figure
    # is reported too.
    db = env.open_db(b"objects")
    with env.begin(write=True) as txn:
        for oid, d in zip(ids, data, strict=True):
            txn.put(oid.raw, d, db=db)
            txn.put(oid.raw, d)
    keys = [oid.raw for oid in ids]

    def ours(_: int = 0) -> None:
        get = store.objects.get
        for oid in ids:
            get(oid)

    def raw(_: int = 0) -> None:
        for key in keys:
            with env.begin() as txn:
                txn.get(key, db=db)

    def raw_main_db(_: int = 0) -> None:
        for key in keys:
            with env.begin() as txn:
                txn.get(key)

    ours_s, raw_s = interleaved(ours, raw, GET_ROUNDS)
    _, main_s = interleaved(ours, raw_main_db, 5)
    benchmark.pedantic(ours, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["ratio_of_raw_main_db"] = round(main_s / ours_s, 3)
    goal = GET_GOALS[f"{size >> 10}KiB" + ("-compressible" if compressible else "")]
    report(benchmark, ours_s, raw_s, goal, size * count, f"get {size}B x{count}")
    assert store.objects.get(ids[0]) == data[0]


@pytest.mark.parametrize(
    ("size", "count", "compressible"),
    [
        (1 << 10, 1000, False),
        (100 << 10, 100, False),
        (16 << 20, 2, False),
        (1 << 10, 1000, True),
        (100 << 10, 100, True),
        (16 << 20, 2, True),
    ],
    ids=["1KiB", "100KiB", "16MiB", "1KiB-compressible", "100KiB-compressible", "16MiB-compressible"],
)
def test_batched_put(benchmark: Any, tmp_path: Path, size: int, count: int, compressible: bool) -> None:
    """Asserted as users run it, durable (fsync per commit) on both sides; the ratio with
    fsync off on both sides, which exposes cas's CPU cost per object, is reported."""
    # small batches are quick and noisier: more rounds
    rounds = {1 << 10: 21, 100 << 10: 13}.get(size, ROUNDS)
    # fresh bytes every round (a put of stored content is a no-op); the same bytes for
    # both sides of a round
    batches = [payloads(size, count, compressible, r) for r in range(2 * rounds)]
    ratios = {}
    for durable in (True, False):
        where = tmp_path / ("durable" if durable else "nosync")
        where.mkdir()
        store, env = open_pair(where, durable)
        db = env.open_db(b"objects")
        offset = rounds if durable else 0

        def ours(r: int, store: Store = store, offset: int = offset) -> None:
            store.objects.write([(ObjType.BLOB, d) for d in batches[offset + r]])

        def raw(r: int, env: lmdb.Environment = env, db: Any = db, offset: int = offset) -> None:
            with env.begin(write=True) as txn:
                for d in batches[offset + r]:
                    txn.put(blake3.blake3(d).digest(), d, db=db)

        ratios[durable] = interleaved(ours, raw, rounds)
        if durable:
            extra = payloads(size, count, compressible, 10_000)
            benchmark.pedantic(lambda s=store, e=extra: s.objects.write([(ObjType.BLOB, d) for d in e]),
                               rounds=1, iterations=1)
            assert store.objects.get(ObjectId.of(batches[offset][0])) == batches[offset][0]
        store.close()
        env.close()
    fast_ours, fast_raw = ratios[False]
    benchmark.extra_info["no_fsync_ratio_of_raw_throughput"] = round(fast_raw / fast_ours, 3)
    ours_s, raw_s = ratios[True]
    goal = None if compressible else PUT_GOAL
    report(benchmark, ours_s, raw_s, goal, size * count, f"put {size}B x{count}")
