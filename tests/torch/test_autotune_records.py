"""Autotune files written by torch's own code (no compile), recorded, hydrated, read back
by torch's own readers.

``.best_config``: ``AutotuneCache.create(...).save(config, ...)`` — the very code a
Triton kernel's autotuner calls on a GPU — writes the file; after record and hydrate
into an empty dir, ``AutotuneCache.read_best`` (what the autotuner calls before
benchmarking) returns the recorded config. Timing files: ``PersistentCache`` writes and
reads them (``lookup`` with no benchmark function: a miss returns nothing).
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest

from cas import autotune as records
from cas.refs import load_commit, resolve
from cas.store import Store
from cas.torch import autotune
from cas.torch.hydrate import hydrate

META = {"autotune_local_cache": True, "coordinate_descent_tuning": True}


def config(**kwargs: int) -> Any:
    return types.SimpleNamespace(kwargs=kwargs, num_warps=4, num_stages=2)


def torch_cache(kernel: Path) -> Any:
    from torch._inductor.runtime.autotune_cache import AutotuneCache

    cache = AutotuneCache.create(META, str(kernel), "configs-hash-1")
    assert cache is not None
    return cache


def test_triton_best_config_round_trips_through_a_record(store: Store, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    kernel = "cq/cqabc123def.py"  # torch names kernel files by their source hash
    (src / "cq").mkdir(parents=True)
    torch_cache(src / kernel).save(config(XBLOCK=256, R0_BLOCK=16), 7_000_000, found_by_coordesc=True)
    torch_cache(src / "zz/czz999.py").save(config(XBLOCK=64), 2_000_000, triton_cache_hash="t")

    # What observe() sees of the autotuner's benchmark: each candidate config's time.
    seen = autotune.Observed(triton={"zz/" + next((src / "zz").glob("*.best_config")).name: {
        "XBLOCK=64,num_stages=2,num_warps=4": 0.011, "XBLOCK=128,num_stages=2,num_warps=4": 0.019}})
    res = autotune.record(store, src, observed=seen)
    assert res.added == 2 and res.commit is not None
    commit = load_commit(store, res.commit)
    assert commit.message == f"autotune: 2 kernels on {res.device}"
    recs = {r.method: r for r in (records.Record.from_bytes(store.get(e.blob) or b"")
                                  for e in autotune.records_in(store, commit.manifest).values())}
    assert set(recs) == {"coordinate_descent", "triton_autotune"}
    assert recs["triton_autotune"].time_ms == 0.011 and len(recs["triton_autotune"].candidates) == 2
    assert recs["coordinate_descent"].time_ms is None  # torch keeps no kernel time
    # re-reading the dir without the observed times is no new measurement: no commit
    assert autotune.record(store, src).commit is None

    got = hydrate(store, "main", dst)
    assert got.by_kind == {records.KIND: 2}
    # The autotuner's candidates; torch matches the cached winner among them (building a
    # new triton.Config, the coordesc path, needs Triton, which the CPU wheel lacks).
    candidates = [config(XBLOCK=128, R0_BLOCK=16), config(XBLOCK=256, R0_BLOCK=16)]
    best = torch_cache(dst / kernel).read_best({"autotune_local_cache": True}, candidates)
    assert best is candidates[1]
    assert resolve(store, "main") == res.commit


class Choice:
    def __init__(self, name: str) -> None:
        self.name = name

    def hash_key(self) -> str:
        return self.name


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from torch._inductor.codecache import CacheBase

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch"))
    CacheBase.get_local_cache_path.cache_clear()
    yield tmp_path / "torch"
    CacheBase.get_local_cache_path.cache_clear()


def test_gemm_timings_recorded_then_hydrated_are_hits_for_torch(store: Store, cache_dir: Path) -> None:
    from torch._inductor.codecache import CacheBase, PersistentCache

    inputs = "[('cpu', 'torch.float32', 8, 32, 32, 1, 0), ('cpu', 'torch.float32', 16, 32, 32, 1, 0)]"
    fast, slow = Choice("cpp_gemm-abc"), Choice("_mkl_linear-def")
    PersistentCache().update_local_cache({"mm": {inputs: {"highest": {fast.name: 0.5, slow.name: 0.9}}}})
    res = autotune.record(store, cache_dir)
    assert res.added == 1

    # A new machine: the timing file is gone; hydrate writes the record back.
    os.unlink(CacheBase.get_local_cache_path())
    assert PersistentCache().lookup([fast, slow], "mm", inputs, None) == {}
    hydrate(store, "main", cache_dir)
    timings = PersistentCache().lookup([fast, slow], "mm", inputs, None)
    assert timings == {fast: 0.5, slow: 0.9}
