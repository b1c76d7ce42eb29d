"""Autotune files written by torch's own code (no compile), recorded, hydrated, read back
by torch's own readers.

``.best_config``: ``AutotuneCache.create(...).save(config, ...)`` — the very code a
Triton kernel's autotuner calls on a GPU — writes the file; after record and hydrate
into an empty dir, ``AutotuneCache.read_best`` (what the autotuner calls before
benchmarking) returns the recorded config. Timing files: ``PersistentCache`` writes and
reads them (``lookup`` with no benchmark function: a miss returns nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cas import tuning
from cas.refs import load_commit, resolve
from cas.store import Store
from cas.torch import autotune
from cas.torch.hydrate import hydrate

META = {"autotune_local_cache": True, "coordinate_descent_tuning": True}


def config(**kwargs: int) -> Any:
    return types.SimpleNamespace(kwargs=kwargs, num_warps=4, num_stages=2)


def torch_cache(kernel: Path, configs_hash: str = "configs-hash-1") -> Any:
    from torch._inductor.runtime.autotune_cache import AutotuneCache

    cache = AutotuneCache.create(META, str(kernel), configs_hash)
    assert cache is not None and cache.local_cache is not None
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
    recs = {r.method: r for r in (tuning.Record.from_bytes(store.objects.get(e.blob) or b"")
                                  for e in autotune.records_in(store, commit.manifest).values())}
    assert set(recs) == {"coordinate_descent", "triton_autotune"}
    assert recs["triton_autotune"].time_ms == 0.011 and len(recs["triton_autotune"].candidates) == 2
    assert recs["coordinate_descent"].time_ms is None  # torch keeps no kernel time
    # re-reading the dir without the observed times is no new measurement: no commit
    assert autotune.record(store, src).commit is None

    got = hydrate(store, "main", dst)
    assert got.by_kind == {tuning.KIND: 2}
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


# -- files in the exact format of each torch version (tests/data/autotune/) -----------------
#
# best_config-2.11.json: ``AutotuneCache.save`` of 2.11 (kwargs, num_warps, num_stages,
# configs_hash, found_by_coordesc, time_taken_ms, triton_cache_hash). best_config-2.14.json:
# 2.13/2.14 add ``extra_options`` when the Config carries some, then the warp-spec pair when
# Triton has warp specialization. gpu-timing-file.json: a CUDA ``select_algorithm`` timing
# file; its ``system`` dict is built the same in 2.11–2.14, its hash by sha256 of the sorted
# JSON (2.11 inline, 2.13/2.14 through ``SYSTEM_CACHE_KEY_STRATEGY``).

DATA = Path(__file__).parent.parent / "data" / "autotune"


@pytest.mark.parametrize("version", ["2.11", "2.14"])
def test_best_config_of_each_torch_version_is_recorded_and_read_back_by_torch(
    store: Store, tmp_path: Path, version: str
) -> None:
    raw = (DATA / f"best_config-{version}.json").read_bytes()
    saved = json.loads(raw)
    src, dst, kernel = tmp_path / "src", tmp_path / "dst", "k7/ck7pointwise.py"
    cache = torch_cache(src / kernel, saved["configs_hash"])
    path = Path(cache.local_cache[1])  # where this torch keeps that kernel's .best_config
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)

    res = autotune.record(store, src)
    (entry,) = autotune.records_in(store, load_commit(store, res.commit).manifest).values()
    rec = tuning.Record.from_bytes(store.objects.get(entry.blob) or b"")
    assert rec.config == {k: v for k, v in saved.items() if k not in (
        "configs_hash", "found_by_coordesc", "time_taken_ms", "triton_cache_hash")}
    assert rec.choice == f"R0_BLOCK={saved['R0_BLOCK']},XBLOCK={saved['XBLOCK']},num_stages=" \
                         f"{saved['num_stages']},num_warps={saved['num_warps']}"
    assert rec.provenance["tuning_ms"] == saved["time_taken_ms"] and rec.method == "triton_autotune"

    hydrate(store, "main", dst)
    written = dst / path.relative_to(src)
    assert json.loads(written.read_bytes()) == saved
    won = types.SimpleNamespace(kwargs={"XBLOCK": saved["XBLOCK"], "R0_BLOCK": saved["R0_BLOCK"]},
                                num_warps=saved["num_warps"], num_stages=saved["num_stages"])
    other = types.SimpleNamespace(kwargs={"XBLOCK": 8, "R0_BLOCK": 8}, num_warps=2, num_stages=1)
    best = torch_cache(dst / kernel, saved["configs_hash"]).read_best({"autotune_local_cache": True},
                                                                           [other, won])
    assert best is won
    if "extra_options" in saved:  # 2.13+: torch hands the saved options back on the winner
        assert getattr(best, "extra_options", None) == saved["extra_options"]


def test_gpu_timing_file_is_recorded_and_written_back_as_torch_wrote_it(tmp_path: Path) -> None:

    raw = (DATA / "gpu-timing-file.json").read_bytes()
    data = json.loads(raw)
    system = data["system"]
    # the system hash: 2.11 computes it inline, 2.13+ through SYSTEM_CACHE_KEY_STRATEGY
    hash_input = {k: v for k, v in system.items() if k != "hash"}
    assert hashlib.sha256(json.dumps(hash_input, sort_keys=True).encode()).hexdigest() == system["hash"]
    try:
        from torch._inductor.cache_key import SYSTEM_CACHE_KEY_STRATEGY
    except ImportError:  # before 2.13
        pass
    else:
        assert SYSTEM_CACHE_KEY_STRATEGY.key_from_json(hash_input) == system["hash"]

    rel = f"cache/{system['hash']}"
    recs = list(tuning.from_timing_file(raw, rel, "cuda-nvidia-h200-sm90", {"device": "NVIDIA H200"}))
    assert sorted(r.op for r in recs) == ["addmm", "mm"]
    mm = next(r for r in recs if r.op == "mm")
    assert len(mm.candidates) == 3 and tuning.short_choice(mm.choice) == "triton_mm"  # inf: failed
    assert mm.shapes == "512x1024 bf16, 1024x4096 bf16" and mm.inputs[1]["stride"] == [1, 1024]

    assert autotune.write_records(recs, tmp_path) == 2
    back = json.loads((tmp_path / rel).read_bytes())
    assert back["system"] == system
    for op, by_inputs in data["cache"].items():
        for key, by_precision in by_inputs.items():
            finite = {c: t for c, t in by_precision["high"].items() if t != float("inf")}
            assert back["cache"][op][key] == {"high": finite}


def test_observe_watches_every_triton_tuning_method_this_torch_has() -> None:
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    names = [n for n in ("benchmark_all_configs", "coordinate_descent_tuning", "_combo_sequential_autotune")
             if hasattr(CachingAutotuner, n)]
    assert "_combo_sequential_autotune" in names  # 2.13 has combo-kernel tuning (2.11 does not)
    before = {n: getattr(CachingAutotuner, n) for n in names}
    with autotune.observe():
        assert all(getattr(CachingAutotuner, n) is not before[n] for n in names)
    assert all(getattr(CachingAutotuner, n) is before[n] for n in names)


def test_a_module_still_being_imported_is_watched_from_the_next_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch imports dynamo from inside inductor modules, so the live session's watcher can
    # find select_algorithm half imported; it then waits for dynamo's compile-start callback.
    from torch._dynamo.callback import CallbackArgs, CallbackTrigger, callback_handler

    half = types.ModuleType("cas_test_half_imported")
    monkeypatch.setitem(sys.modules, half.__name__, half)
    seen: list[Any] = []
    before = list(callback_handler.start_callbacks)
    autotune._when_ready(half.__name__, "add_feedback_saver", seen.append)
    try:
        assert seen == [] and len(callback_handler.start_callbacks) == len(before) + 1
        half.add_feedback_saver = print  # type: ignore[attr-defined]  # its import finished
        for _ in range(2):
            callback_handler.run_start_callbacks(CallbackArgs(CallbackTrigger.DYNAMO, "0/0"))
        assert seen == [half]  # once
    finally:
        callback_handler.start_callbacks[:] = before
