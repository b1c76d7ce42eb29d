"""gc with a byte budget against a plain reachability gc, measured in the same run.

A store of ``n`` entries: ``main`` with 10 commits of n/10 entries each (the same keys
with new 400-byte blobs every commit, as a recompile writes them), the first commit
tagged, everything a month old. Each round copies the store and runs, alternately:

* baseline: ``gc(store)``, a plain reachability gc (mark from the refs, sweep; here it
  finds nothing to free, which is the common case and its full cost);
* budget: ``gc(store, budget=Budget(half of the store, keep_commits=2))``: the same mark,
  plus marking what the tag and the last 2 commits name, ordering the ~5.5 n/10 old blobs
  by read and write time, and evicting enough of them in one transaction.

Reported in ``extra_info``: the fastest round of each (seconds), their ratio, and the
peak Python heap of each (tracemalloc, in a separate untimed round), and its ratio.

Run: ``.venv/bin/pytest bench/bench_gc.py --benchmark-only`` (10^5 entries);
``CAS_BENCH_GC_MILLION=1`` adds 10^6 entries (with ``--timeout 3200``: about half an
hour on a loaded 2-core machine, most of it building the store).
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import os
import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cas import history, manifest
from cas.budget import Budget
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.gc import GcReport, gc
from cas.objects import Entry, EntryKey, Env
from cas.refs import create_tag
from cas.stats import stats
from cas.store import Store

COMMITS = 10
BLOB = 400
SIZES = [100_000, *([1_000_000] if os.environ.get("CAS_BENCH_GC_MILLION") else [])]
ROUNDS = {100_000: 3, 1_000_000: 1}


def build(path: Path, entries: int) -> int:
    """The store described in the module docstring; returns its stored bytes."""
    month_ago = time.time() - 30 * 86400
    env = Env({"device": "cpu"})
    with Store.init(path, durable=False, clock=lambda: month_ago) as s:
        s.objects.put_object(env)
        tip: ObjectId | None = None
        for i in range(COMMITS):
            blobs = s.objects.write((ObjType.BLOB, os.urandom(16) + bytes(BLOB - 16)) for _ in range(entries // COMMITS))
            root = manifest.build(s, {EntryKey(env.id, "inductor", f"g{j}"): Entry(b, BLOB) for j, b in enumerate(blobs)})
            tip = history.commit(s, root, [tip] if tip else [], f"c{i}", when=i)
            s.refs.set("refs/heads/main", tip, expected=s.refs.get("refs/heads/main"))
            if i == 0:
                create_tag(s, "release/1", tip, message="pin")
        return stats(s).stored_bytes


def fresh_copy(src: Path, work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)


def run_gc(work: Path, budget: Budget | None) -> GcReport:
    with Store(work, durable=False) as s:
        return gc(s, grace_seconds=3600, budget=budget)


def one_round(src: Path, work: Path, budget: Budget | None) -> tuple[float, GcReport]:
    fresh_copy(src, work)
    t = time.perf_counter()
    report = run_gc(work, budget)
    return time.perf_counter() - t, report


def peak(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("entries", SIZES)
def test_budget_gc_against_plain_gc(benchmark: Any, tmp_path: Path, entries: int) -> None:
    src, work = tmp_path / "src", tmp_path / "work"
    size = build(src, entries)
    budget = Budget(size // 2, keep_commits=2)
    plain_s, budget_s = [], []
    for r in range(ROUNDS[entries]):
        for kind in ("plain", "budget") if r % 2 == 0 else ("budget", "plain"):
            took, report = one_round(src, work, budget if kind == "budget" else None)
            (budget_s if kind == "budget" else plain_s).append(took)
            if kind == "budget":
                assert report.size_after is not None and report.size_after <= budget.max_size
    plain_mem = peak(lambda: one_round(src, work, None))
    budget_mem = peak(lambda: one_round(src, work, budget))
    benchmark.extra_info.update(
        entries=entries,
        store_bytes=size,
        plain_s=round(min(plain_s), 2),
        budget_s=round(min(budget_s), 2),
        time_ratio=round(min(budget_s) / min(plain_s), 2),
        plain_peak_mib=round(plain_mem / 2**20, 1),
        budget_peak_mib=round(budget_mem / 2**20, 1),
        peak_ratio=round(budget_mem / plain_mem, 2),
    )
    print(benchmark.extra_info)
    benchmark.pedantic(run_gc, args=(work, budget), setup=lambda: fresh_copy(src, work), rounds=1, iterations=1)
