"""Autotune records read from files in the formats torch writes, and records in a store.

``data/autotune/cpu-timing-file.json`` is a real ``select_algorithm`` timing file, written
by torch 2.13 for tests/torch/autotune_workload.py (CPU, max-autotune, freezing). The GPU
timing file differs only in its ``system`` dict, built as ``CacheBase.get_system`` does
(codecache.py: device name, triton/cuda versions, hash). ``.best_config`` bytes are made
by torch itself in tests/torch/test_autotune_records.py; here they are the bytes
``AutotuneCache.save`` + ``RemoteCacheJsonSerde`` produce (``json.dumps`` of the dict in
the order save builds it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cas import history, manifest, refs, tuning
from cas.errors import BadAutotuneRecord
from cas.objects import Entry, EntryKey, Env
from cas.store import Store
from cas_cli import autotune_rows

CPU_FILE = (Path(__file__).parent / "data" / "autotune" / "cpu-timing-file.json").read_bytes()
CPU_CLASS = "cpu-0123456789abcdef"
PROV = {"device": "Test CPU", "host": "h1", "time": 100.0, "torch": "2.13.0", "rank": 0}


def best_config_bytes(coordesc: bool = False, **kwargs: int) -> bytes:
    data = {**(kwargs or {"XBLOCK": 1024, "R0_BLOCK": 8}), "num_warps": 4, "num_stages": 1,
            "configs_hash": "9f2c" * 16, "found_by_coordesc": coordesc, "time_taken_ms": 5,
            "triton_cache_hash": "th" * 32}
    return bytes(json.dumps(data), "ascii")


def test_cpu_timing_file_gives_one_record_per_gemm_shape_with_every_candidate() -> None:
    recs = list(tuning.from_timing_file(CPU_FILE, "cache/4413", CPU_CLASS, PROV))
    assert len(recs) == 3 and len({r.key for r in recs}) == 3
    raw = json.loads(CPU_FILE)["cache"]["packed_linear"]
    for rec in recs:
        times = raw[rec.source["inputs_key"]]["highest"]
        assert rec.candidates == times
        assert rec.time_ms == min(times.values()) and rec.config["choice"] == min(times, key=times.__getitem__)
        assert rec.op == "packed_linear" and rec.method == "select_algorithm"
        assert rec.inputs[0]["device"] == "cpu" and rec.inputs[0]["dtype"] == "torch.float32"
        assert rec.provenance["host"] == "h1" and rec.device_class == CPU_CLASS
    shapes = sorted(r.inputs[0]["shape"][1] for r in recs)
    assert shapes == [48, 64, 96]


def test_inputs_key_gives_shapes_strides_and_offsets() -> None:
    key = "[('cuda', 'torch.float16', 64, 512, 512, 1, 0), ('cuda', 'torch.float16', 512, 256, 1, 512, 0)]"
    a, b = tuning.parse_inputs_key(key)
    assert a == {"device": "cuda", "dtype": "torch.float16", "shape": [64, 512], "stride": [512, 1], "offset": 0}
    assert b["shape"] == [512, 256] and b["stride"] == [1, 512]  # a transposed layout
    assert tuning.parse_inputs_key(key + "_128") == [a, b]  # hint override suffix
    assert tuning.parse_inputs_key("not a key") == []


def test_gpu_timing_file_system_dict_is_kept_for_writing_back() -> None:
    system = {"device": {"name": "NVIDIA H200"}, "version": {"triton": "abc", "cuda": "12.8"}, "hash": "77"}
    key = "[('cuda', 'torch.bfloat16', 128, 256, 256, 1, 0), ('cuda', 'torch.bfloat16', 256, 64, 64, 1, 0)]"
    content = json.dumps({"system": system, "cache": {"mm": {key: {"high": {
        "triton_mm_1-abc": 0.011, "mm-def": 0.014, "triton_mm_2-ghi": float("inf")}}}}}, indent=4)
    (rec,) = tuning.from_timing_file(content.encode(), "cache/77", "cuda-nvidia-h200-sm90", PROV)
    assert rec.config == {"choice": "triton_mm_1-abc", "precision": "high"}
    assert set(rec.candidates) == {"triton_mm_1-abc", "mm-def"}  # a failed candidate is no time
    assert rec.source["system"] == system and rec.shapes == "128x256 bf16, 256x64 bf16"


def test_best_config_record_keeps_the_config_torch_saved() -> None:
    rec = tuning.from_best_config(best_config_bytes(), "ab/cd.best_config", "cuda-x-sm90", PROV)
    assert rec is not None
    assert rec.config == {"XBLOCK": 1024, "R0_BLOCK": 8, "num_warps": 4, "num_stages": 1}
    assert rec.method == "triton_autotune" and rec.time_ms is None  # torch keeps no kernel time
    assert rec.provenance["tuning_ms"] == 5 and rec.source["content"] == json.loads(best_config_bytes())
    assert rec.key == "triton/ab/cd.best_config"


def test_best_config_with_observed_timings_has_winner_and_candidate_times() -> None:
    timings = {"R0_BLOCK=8,XBLOCK=1024,num_stages=1,num_warps=4": 0.02,
               "R0_BLOCK=16,XBLOCK=512,num_stages=1,num_warps=8": 0.03}
    rec = tuning.from_best_config(best_config_bytes(), "ab/cd.best_config", "c", PROV, timings=timings)
    assert rec is not None and rec.time_ms == 0.02 and rec.candidates == timings


def test_coordinate_descent_and_remote_values_are_records_too() -> None:
    rec = tuning.from_best_config(best_config_bytes(coordesc=True, XBLOCK=2048), "ab/cd.best_config", "c", PROV)
    assert rec is not None and rec.method == "coordinate_descent" and rec.config["XBLOCK"] == 2048
    remote = tuning.from_best_config(best_config_bytes(), "cfgset::kernel", "c", PROV, remote=True)
    assert remote is not None and remote.key == "triton-remote/cfgset::kernel" and remote.source["remote"]
    assert tuning.from_best_config(b"{}", "x", "c", PROV) is None
    assert tuning.from_best_config(b"\x80pickle", "x", "c", PROV) is None


def test_record_bytes_round_trip_and_a_newer_format_is_refused() -> None:
    rec = next(tuning.from_timing_file(CPU_FILE, "cache/4413", CPU_CLASS, PROV))
    assert tuning.Record.from_bytes(rec.to_bytes()) == rec
    newer = json.loads(rec.to_bytes()) | {"format": 2}
    with pytest.raises(BadAutotuneRecord):
        tuning.Record.from_bytes(json.dumps(newer).encode())


# -- records in a store ---------------------------------------------------------------------


def commit_records(store: Store, recs: list[tuning.Record], parents: list, producer: str = "autotune") -> object:
    env = store.objects.put_object(Env({"device": "cpu"}))
    base = refs.load_commit(store, parents[0]).manifest if parents else manifest.EMPTY
    changes = {}
    for rec in recs:
        oid = store.objects.put(rec.to_bytes())
        changes[EntryKey(env, tuning.KIND, rec.key, rec.device_class)] = Entry(
            oid, len(rec.to_bytes()), None, tuning.entry_meta(rec))
    root = manifest.update(store, base, changes)
    return history.commit(store, root, parents, f"autotune: {len(recs)} kernels", {"producer": producer})


def faster(rec: tuning.Record, factor: float) -> tuning.Record:
    cands = {c: t * factor for c, t in rec.candidates.items()}
    return tuning.Record(**{**rec.__dict__, "candidates": cands, "time_ms": min(cands.values()),
                              "provenance": {**rec.provenance, "host": "h2"}})


def test_log_show_and_diff_name_the_measuring_commit_and_the_speedup(store: Store) -> None:
    recs = list(tuning.from_timing_file(CPU_FILE, "cache/4413", CPU_CLASS, PROV))
    first = commit_records(store, recs, [])
    second = commit_records(store, [faster(recs[0], 0.5), faster(recs[1], 2.0)], [first])
    log = autotune_rows.log_rows(store, second)
    assert [r.commit for r in log] == [second, second, first, first, first]
    shown = {r.key.key: r.commit for r in autotune_rows.show_rows(store, second)}
    assert shown == {recs[0].key: second, recs[1].key: second, recs[2].key: first}
    verdicts = {d.key.key: (d.verdict(), d.ratio()) for d in autotune_rows.diff_rows(store, first, second)}
    assert verdicts[recs[0].key] == ("speedup", pytest.approx(2.0))
    assert verdicts[recs[1].key] == ("regression", pytest.approx(0.5))
    assert recs[2].key not in verdicts


def test_merge_commit_message_says_which_measurement_each_kernel_kept(store: Store) -> None:
    from cas.sync.merge import integrate

    recs = list(tuning.from_timing_file(CPU_FILE, "cache/4413", CPU_CLASS, PROV))
    ours = commit_records(store, recs, [])
    store.refs.set("refs/heads/main", ours, expected=None)
    theirs = commit_records(store, [faster(recs[0], 0.5), faster(recs[1], 2.0)], [])
    done = integrate(store, "refs/heads/main", theirs, message="pull b", who="t")
    message = refs.load_commit(store, done.new).message
    assert message.startswith("pull b\n\nautotune, faster measurement kept:\n")
    lines = message.splitlines()[3:]
    assert len(lines) == 2 and all(line.startswith("packed_linear [16x") for line in lines)
    assert sum("kept theirs" in line for line in lines) == 1 and sum("kept ours" in line for line in lines) == 1
    assert all(f"on {CPU_CLASS}" in line and "(_mkl_linear)" in line for line in lines)


# -- impossible times (issue 16, point 15) ----------------------------------------------------

#: Times no measurement gives: each would win every merge, or is no number at all.
IMPOSSIBLE = [-1.0, 0.0, 1e-300, float("nan"), float("inf")]


@pytest.mark.parametrize("bad", IMPOSSIBLE)
def test_a_record_with_an_impossible_time_is_refused_at_record(store: Store, bad: float) -> None:
    from cas.torch.autotune import record  # imports no torch: the refusal comes first

    good, other = list(tuning.from_timing_file(CPU_FILE, "cache/4413", CPU_CLASS, PROV))[:2]
    forged = [replace(good, time_ms=bad), replace(other, candidates={**other.candidates, "cheat": bad})]
    for rec in forged:
        with pytest.raises(BadAutotuneRecord) as err:
            record(store, records=[good, rec])
        assert "impossible" in err.value.message and rec.key in err.value.message
        assert "\n" not in err.value.message
        with pytest.raises(BadAutotuneRecord):  # a rank's or a peer's blob alike
            tuning.Record.from_bytes(json.dumps({**json.loads(good.to_bytes()), "time_ms": bad}).encode())
    assert store.refs.get("refs/heads/main") is None  # nothing committed


def test_impossible_times_in_torch_files_are_left_out_like_failed_ones() -> None:
    data = json.loads(CPU_FILE)
    slot = next(iter(data["cache"]["packed_linear"].values()))["highest"]
    slot.update({"neg": -1.0, "zero": 0.0, "tiny": 1e-300})
    for rec in tuning.from_timing_file(json.dumps(data).encode(), "cache/4413", CPU_CLASS, PROV):
        assert rec.problem() is None and not {"neg", "zero", "tiny"} & set(rec.candidates)
    got = tuning.from_best_config(best_config_bytes(), "ab/cd.best_config", "c", PROV,
                                    timings={"XBLOCK=1024,R0_BLOCK=8,num_stages=1,num_warps=4": 0.0})
    assert got is not None and got.time_ms is None and got.candidates == {}


def _commit_meta(store: Store, rec: tuning.Record, time_ms: float, parents: list) -> object:
    """A commit holding ``rec`` whose entry claims ``time_ms``, written directly (as a
    store can come to hold one: not through record, not received)."""
    env = store.objects.put_object(Env({"device": "cpu"}))
    base = refs.load_commit(store, parents[0]).manifest if parents else manifest.EMPTY
    oid = store.objects.put(rec.to_bytes())
    entry = Entry(oid, len(rec.to_bytes()), None, {**tuning.entry_meta(rec), "time_ms": time_ms})
    root = manifest.update(store, base, {EntryKey(env, tuning.KIND, rec.key, rec.device_class): entry})
    return history.commit(store, root, parents, "autotune", {"producer": "autotune"})


@pytest.mark.parametrize("bad", IMPOSSIBLE)
def test_an_impossible_time_never_wins_a_merge(store: Store, bad: float) -> None:
    from cas.sync.merge import integrate

    rec = next(tuning.from_timing_file(CPU_FILE, "cache/4413", CPU_CLASS, PROV))
    base = _commit_meta(store, rec, 5.0, [])
    for ours_ms, theirs_ms in ((bad, 0.5), (0.5, bad)):  # on either side
        ours, theirs = _commit_meta(store, rec, ours_ms, [base]), _commit_meta(store, rec, theirs_ms, [base])
        store.refs.set("refs/heads/main", ours)
        done = integrate(store, "refs/heads/main", theirs, message="pull", who="t")  # type: ignore[arg-type]
        (row,) = autotune_rows.show_rows(store, done.new)  # type: ignore[arg-type]
        assert row.meta["time_ms"] == 0.5
    (shown,) = autotune_rows.show_rows(store, _commit_meta(store, rec, bad, [base]))  # type: ignore[arg-type]
    assert shown.time() is None and shown.to_dict()["time_ms"] is None  # listed as untimed
