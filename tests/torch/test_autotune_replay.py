"""Autotune records from a real CPU max-autotune compile: commit, merge, replay.

One cold compile per session (``tuned``): machine A compiles a three-GEMM model with
``mode="max-autotune"`` and freezing, and records what ``select_algorithm`` measured on
top of a base commit B. Machine B (a clone of A taken at B) stands for another machine of
the same CPU class: its records are A's real records with measured times edited (the one
honest shortcut: this box has one CPU), so that on one GEMM shape the C++ template beats
``_mkl_linear`` there. A record of another device class rides along.

A new machine (a torch cache dir and a TMPDIR empty but for compiled C++ code, a store
filled by ``cas clone`` over a real transport) then hydrates the merge and compiles again: torch benchmarks nothing
and picks the merged choices — including the flipped one, which only the record knows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from autotune_fixtures import MARKER, WORKLOAD, Tuned, seed_header, seed_kernels
from torchkit import TorchEnv

from cas import history, manifest, refs, tuning
from cas.objects import Entry, EntryKey
from cas.store import Store

OTHER_CLASS = "cpu-0ther0ther0ther0"


def records(store: Store, rev: str) -> dict[EntryKey, tuning.Record]:
    root = refs.load_commit(store, refs.resolve(store, rev)).manifest
    return {k: tuning.Record.from_bytes(store.objects.get(e.blob) or b"") for k, e in manifest.entries(store, root)
            if k.kind == tuning.KIND}


def test_recording_makes_its_own_commit_with_real_measurements(tuned: Tuned, torch_env: TorchEnv) -> None:
    assert tuned.run["benchmarks"]["select_algorithm_autotune"] == 3  # three GEMM shapes tuned
    with Store(tuned.a) as store:
        commit = refs.load_commit(store, refs.resolve(store, tuned.recorded))
        recs = records(store, tuned.recorded)
    assert commit.message.startswith("autotune: 3 kernels on ")
    assert commit.metadata["producer"] == "autotune" and commit.metadata["kernels"] == 3
    for rec in recs.values():
        assert rec.op == "packed_linear" and len(rec.candidates) == 2
        assert rec.time_ms == min(rec.candidates.values()) and rec.provenance["torch"].startswith("2.")
        picked = tuned.run["picked"][f"{rec.op} {rec.source['inputs_key']}"]
        assert rec.config["choice"] == picked  # the record says what torch chose
    shown = json.loads(torch_env.cas(tuned.a, "--json", "autotune", "show").stdout)
    assert len(shown) == 3 and {r["commit"] for r in shown} == {tuned.recorded}
    logged = json.loads(torch_env.cas(tuned.a, "--json", "autotune", "log").stdout)
    assert {r["key"] for r in logged} == {r["key"] for r in shown}
    table = torch_env.cas(tuned.a, "autotune", "show").stdout
    assert "packed_linear" in table


def other_machine(tuned: Tuned) -> dict[str, str]:
    """Commit machine B's records on B: A's records with edited times. Returns key -> expected winner."""
    with Store(tuned.a) as a_store:
        recs = records(a_store, tuned.recorded)
        env_type, env_bytes = a_store.objects.require(next(iter(recs)).env)
    keys = sorted(recs, key=lambda k: k.key)
    flip, slower, other = keys
    changes: dict[EntryKey, Entry | None] = {}
    expected = {}

    def put(store: Store, ek: EntryKey, rec: tuning.Record) -> None:
        data = rec.to_bytes()
        changes[ek] = Entry(store.objects.put(data), len(data), None, tuning.entry_meta(rec))

    with Store(tuned.b) as store:
        store.objects.put(env_bytes, env_type)
        for ek in (flip, slower, other):
            rec = recs[ek]
            best = rec.config["choice"]
            loser = next(c for c in rec.candidates if c != best)
            if ek is flip:  # on B the C++ template measured faster than A's winner
                cands = {best: rec.candidates[best] * 2, loser: rec.candidates[best] / 2}
            elif ek is slower:  # B measured A's winner slower: A's record must stay
                cands = {c: t * 3 for c, t in rec.candidates.items()}
            else:  # B's own device class: kept next to A's, never replacing it
                cands = {c: t / 10 for c, t in rec.candidates.items()}
            winner = min(cands, key=cands.__getitem__)
            new = tuning.Record(**{**rec.__dict__, "candidates": cands, "time_ms": cands[winner],
                                     "config": {**rec.config, "choice": winner},
                                     "device_class": OTHER_CLASS if ek is other else rec.device_class,
                                     "provenance": {**rec.provenance, "host": "machine-b"}})
            put(store, EntryKey(ek.env, ek.kind, ek.key, new.device_class), new)
            expected[ek.key] = winner if ek is flip else best
        history.commit_changes(store, "main", changes, f"autotune: 3 kernels on {new.provenance['device']}",
                               {"producer": "autotune"})
    return expected


def test_merge_keeps_the_faster_record_per_kernel_and_device_class_then_replay_benchmarks_nothing(
    tuned: Tuned, torch_env: TorchEnv, tmp_path: Path
) -> None:
    expected = other_machine(tuned)
    before = tuned.recorded
    torch_env.cas(tuned.a, "remote", "add", "b", str(tuned.b), "--trusted")
    torch_env.cas(tuned.a, "pull", "b", "main")
    with Store(tuned.a) as store:
        head = refs.resolve(store, "main")
        merge = refs.load_commit(store, head)
        merged = records(store, "main")
    assert len(merge.parents) == 2
    # same kernel, same device class: the faster measurement won, one per kernel
    here = {k.key: r for k, r in merged.items() if k.variant != OTHER_CLASS}
    assert {k: r.config["choice"] for k, r in here.items()} == expected
    flipped = next(k for k, r in here.items() if r.provenance["host"] == "machine-b")
    assert sum(r.provenance["host"] == "machine-b" for r in here.values()) == 1
    # another device class never replaces: both records of that kernel are there
    assert sum(k.variant == OTHER_CLASS for k in merged) == 1 and len(merged) == 4
    assert "packed_linear" in merge.message and "theirs" in merge.message
    assert len(merge.metadata["autotune"]) == 2  # the two same-class conflicts, decided
    diff = json.loads(torch_env.cas(tuned.a, "--json", "autotune", "diff", before, "main").stdout)
    verdicts = {(d["key"], d["device_class"]): d["verdict"] for d in diff}
    assert verdicts[(flipped, here[flipped].device_class)] == "speedup"
    assert sorted(verdicts.values()) == ["added", "speedup"]
    assert "speedup" in torch_env.cas(tuned.a, "autotune", "diff", before, "main").stdout

    # Another machine, as far as autotuning goes: no timings, no FX/AOT entries, a store
    # cloned over a transport. The cache dir gets the cold run's compiled C++ kernels (seed_kernels: code only, no
    # FX/AOT entries, no timings) and the TMPDIR its precompiled header (seed_header:
    # compiler output for any model), so g++ does not rebuild them; benchmarks and picks
    # are decided by the hydrated records alone.
    new = tmp_path / "new"
    torch_env.cas(new, "clone", str(tuned.a), str(new), "--trusted")
    seed_kernels(tuned, tmp_path / "cache")
    replay = torch_env.python(tmp_path / "cache", str(WORKLOAD), str(new), "--hydrate", "main",
                              marker=MARKER, tmpdir=seed_header(tuned, tmp_path / "tmp"), timeout=600)
    assert replay["hydrated"] == {"autotune_record": 3}
    assert replay["benchmarks"] == {"select_algorithm_autotune": 0, "coordesc_tuning_bench": 0,
                                    "combo_autotune_bench": 0, "triton_benchmark_all_configs": 0}
    for rec in here.values():
        assert replay["picked"][f"{rec.op} {rec.source['inputs_key']}"] == rec.config["choice"]
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
