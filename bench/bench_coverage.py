"""`cas coverage` of a 10^5-entry pin against the manifest walk it is built on.

Baseline: iterating every (key, entry) of the same manifest (``manifest.entries``), which
any coverage must do once. The ratio says what the per-env, per-kind, per-graph
bookkeeping costs on top. The pin holds two envs and four kinds; every third key shares
its graph with two other variants. Run: .venv/bin/pytest bench/bench_coverage.py --benchmark-only
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import coverage, history, manifest, refs
from cas.objects import Entry, EntryKey, Env
from cas.store import Store

N = 100_000
KINDS = ("inductor", "aot_autograd", "cpp_kernel", "autotune")


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("coverage") / "store"
    with Store.init(path) as s:
        envs = [s.objects.put_object(Env({"device": "cpu", "threads": str(t)})) for t in (4, 8)]
        blob = s.objects.put(b"x" * 100)
        entries = {EntryKey(envs[i % 2], KINDS[i % 4], f"k{i // 3:08d}", f"v{i % 3}"): Entry(blob, 100)
                   for i in range(N)}
        pin = history.commit_changes(s, "main", entries, "big", {"producer": "capture", "host": "h"})
        refs.create_tag(s, "release/1.4", pin, message="pin")
        yield s


@pytest.mark.parametrize("what", ["manifest.entries walk (baseline)", "cas coverage"])
def test_coverage_of_a_large_pin(benchmark, pinned: Store, what: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"coverage of {N} entries"
    root = refs.load_commit(pinned, refs.resolve(pinned, "release/1.4")).manifest

    def walk() -> int:
        return sum(1 for _ in manifest.entries(pinned, root))

    def cover() -> int:
        return coverage.coverage(pinned, "release/1.4").entries

    got = benchmark.pedantic(walk if what.startswith("manifest") else cover, rounds=5, iterations=1)
    assert got == N
