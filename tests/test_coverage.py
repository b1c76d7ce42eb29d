"""`cas coverage REF`: what a pin covers per env, kind, graph and recorder, and the miss
reports that machines send back, on real stores and through the real `cas` executable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cas import coverage, history, refs
from cas.digest import ObjectId
from cas.objects import Entry, EntryKey, Env
from cas.store import Store

CPU = Env({"device": "cpu", "cpu_isa": "avx2", "threads": "8", "torch_version": "2.13.0", "python": "3.12.3"})
GPU = Env({"device": "cuda", "gpu": "NVIDIA H100", "gpu_capability": "9.0", "torch_version": "2.13.0",
           "python": "3.12.3"})
GCC = {"cxx": "g++", "cxx_version": "13.2.0", "cxx_id": "abc"}


def _entry(s: Store, data: str, meta: dict[str, Any] | None = None) -> Entry:
    raw = data.encode() * 10
    return Entry(s.objects.put(raw), len(raw), None, meta or {})


def seed(path: Path) -> dict[str, ObjectId]:
    """release/1.4: the CPU env holds two graphs (one in two shape variants), an AOT entry
    and a C++ kernel, recorded by `train.py`; the GPU env holds one of the graphs and an
    autotune record, captured. main then moves on past the tag."""
    with Store.init(path) as s:
        cpu, gpu = s.objects.put_object(CPU), s.objects.put_object(GPU)
        first = {
            EntryKey(cpu, "inductor", "fgraphA", "s0"): _entry(s, "a0"),
            EntryKey(cpu, "inductor", "fgraphA", "s1"): _entry(s, "a1"),
            EntryKey(cpu, "inductor", "fgraphB"): _entry(s, "b"),
            EntryKey(cpu, "aot_autograd", "aotA"): _entry(s, "aot"),
            EntryKey(cpu, "cpp_kernel", "ab/kern.so", "cpu-1234"): _entry(s, "so", GCC),
        }
        history.commit_changes(s, "main", first, "cpu run", {
            "producer": "live", "program": "train.py", "host": "box-a", "env": cpu.hex,
            "kinds": {"inductor": 3, "aot_autograd": 1, "cpp_kernel": 1}})
        second = {EntryKey(gpu, "inductor", "fgraphA"): _entry(s, "ga"),
                  EntryKey(gpu, "autotune", "ab/tri.best_config"): _entry(s, "tune")}
        pin = history.commit_changes(s, "main", second, "gpu capture", {
            "producer": "capture", "host": "gpu-1", "env": gpu.hex, "counts": {"inductor": 1, "autotune": 1}})
        refs.create_tag(s, "release/1.4", pin, message="the release")
        history.commit_changes(s, "main", {EntryKey(cpu, "inductor", "later"): _entry(s, "later")}, "later")
        return {"pin": pin, "cpu": cpu, "gpu": gpu}


def test_a_pin_is_covered_per_env_kind_graph_and_recorder(store_path: Path) -> None:
    ids = seed(store_path)
    with Store(store_path) as s:
        cov = coverage.coverage(s, "release/1.4")
    got = cov.to_dict()
    assert got["commit"] == ids["pin"].hex and got["entries"] == 7
    assert got["kinds"] == {"aot_autograd": 1, "autotune": 1, "cpp_kernel": 1, "inductor": 4}
    envs = {e["env"]: e for e in got["envs"]}
    cpu, gpu = envs[ids["cpu"].hex], envs[ids["gpu"].hex]
    assert cpu["fields"]["cpu_isa"] == "avx2" and gpu["fields"]["gpu"] == "NVIDIA H100"
    assert cpu["kinds"] == {"aot_autograd": 1, "cpp_kernel": 1, "inductor": 3}
    assert cpu["toolchains"] == ["g++ 13.2.0"] and cpu["cpus"] == ["1234"]
    assert gpu["kinds"] == {"autotune": 1, "inductor": 1} and gpu["toolchains"] == []
    graphs = {(g["kind"], g["key"]): g for g in got["graphs"]["shown"]}
    assert set(graphs) == {("inductor", "fgraphA"), ("inductor", "fgraphB"), ("aot_autograd", "aotA")}
    assert graphs[("inductor", "fgraphA")]["variants"] == ["", "s0", "s1"]  # shapes, both envs
    assert graphs[("inductor", "fgraphA")]["envs"] == sorted([ids["cpu"].hex, ids["gpu"].hex])
    assert got["graphs"]["total"] == 3 and got["graphs"]["variants"] == 5
    recorders = {r["name"]: r for r in got["recorders"]}
    assert set(recorders) == {"train.py", "capture"}  # not what main recorded after the tag
    assert recorders["train.py"]["hosts"] == ["box-a"] and recorders["train.py"]["entries"] == 5
    assert recorders["capture"]["entries"] == 2 and recorders["capture"]["envs"] == [ids["gpu"].hex]
    assert got["misses"]["reports"] == 0


def _stats_line(pin: ObjectId, env: ObjectId) -> dict[str, Any]:
    """One process's stats as cas.torch.enable writes them for `cas run` at exit."""
    return {
        "ref": "release/1.4", "commit": pin.hex, "env": env.hex,
        "counters": {"inductor": {"fxgraph_cache_hit": 2, "fxgraph_cache_miss": 1},
                     "aot_autograd": {"autograd_cache_hit": 1, "autograd_cache_miss": 1}},
        "live": {"by_kind": {"inductor": {"misses": 1}, "pgo": {"hits": 1, "misses": 0}},
                 "missed": {"inductor": ["fgraphC"], "aot_autograd": ["aotC"]}},
        "warmth": {"rebuilds": [{"kind": "inductor", "count": 1, "reason": "1 FX graph not in the store, compiled"}]},
    }


def test_a_miss_report_travels_over_a_path_remote_and_is_summed(cas: Any, tmp_path: Path) -> None:
    """Machine B clones the team store, runs from release/1.4, commits a report of what
    missed and pushes its report branch; coverage on the team store sums it."""
    team, b = tmp_path / "team", tmp_path / "b"
    ids = seed(team)
    cas("clone", str(team), str(b))
    with Store(b) as s:
        made = coverage.run_reports([_stats_line(ids["pin"], ids["cpu"]), _stats_line(ids["pin"], ids["cpu"]),
                                     {"ref": "main", "commit": None}], host="box b", time=1_700_000_000)
        assert len(made) == 1 and made[0]["processes"] == 2
        coverage.write_report(s, made[0])
    assert coverage.report_branch("box b") == "cas/reports/box-b"
    cas("--store", str(b), "push", "origin", "cas/reports/box-b")
    got = json.loads(cas("--store", str(team), "--json", "coverage", "release/1.4").stdout)["misses"]
    assert got["reports"] == 1 and got["hosts"] == ["box b"] and got["envs"] == [ids["cpu"].hex]
    assert got["lookups"]["inductor"] == {"hits": 4, "misses": 2}  # torch's counters, two processes
    assert got["lookups"]["pgo"] == {"hits": 2, "misses": 0}  # the live backend's
    assert {(m["kind"], m["key"]) for m in got["missed"]} == {("inductor", "fgraphC"), ("aot_autograd", "aotC")}
    assert got["rebuilds"] == [{"kind": "inductor", "reason": "1 FX graph not in the store, compiled", "count": 2}]
    # Fetched back into B, the same report is counted once (local branch and origin's).
    cas("--store", str(b), "fetch", "origin")
    again = json.loads(cas("--store", str(b), "--json", "coverage", "release/1.4").stdout)["misses"]
    assert again["reports"] == 1
    # A report is about one pin: main's tip has none.
    assert json.loads(cas("--store", str(team), "--json", "coverage", "main").stdout)["misses"]["reports"] == 0


def test_a_report_is_bounded(store: Store) -> None:
    pin = ObjectId.of(b"pin")
    report = coverage.make_report(
        pin=pin, ref="r" * 1000, host="h", env=None, time=1, processes=1,
        lookups={f"kind{i}": {"hits": 1, "misses": 1} for i in range(100)},
        missed={"inductor": [f"k{i}" for i in range(10_000)]},
        rebuilds=[{"kind": "inductor", "count": 1, "reason": "x" * 5000}] * 100)
    assert len(report["lookups"]) == coverage.REPORT_KINDS
    assert len(report["missed"]["inductor"]) == coverage.REPORT_KEYS
    assert len(report["rebuilds"]) == coverage.REPORT_REBUILDS and len(report["ref"]) == coverage.REPORT_TEXT
    oid = coverage.write_report(store, report)
    assert len(store.objects.get(oid) or b"") < 16 << 10


def test_the_command_prints_a_summary_and_json(cas: Any, store_path: Path) -> None:
    ids = seed(store_path)
    text = cas("coverage", "release/1.4").stdout
    assert f"release/1.4 ({ids['pin'].short()}): 7 entries, 2 env(s), 3 graphs in 5 variants" in text
    assert "NVIDIA H100 (sm 9.0), torch 2.13.0" in text and "cpu avx2 x8" in text
    assert "train.py: 1 commit(s), 5 entries, on box-a" in text
    assert "no reports for this pin" in text
    got = json.loads(cas("--json", "coverage", "release/1.4").stdout)
    assert set(got) == {"ref", "commit", "entries", "bytes", "kinds", "envs", "graphs", "recorders", "misses"}
    assert set(got["envs"][0]) == {"env", "fields", "entries", "bytes", "kinds", "toolchains", "cpus"}
    assert set(got["misses"]) == {"reports", "hosts", "envs", "lookups", "missed", "rebuilds"}


def test_an_env_id_is_judged_without_this_machine(cas: Any, store_path: Path) -> None:
    """--env ENV answers for another machine's env: the GPU env has fgraphA and an
    autotune record, so it would compile the graphs only the CPU env holds."""
    ids = seed(store_path)
    here = json.loads(cas("--json", "coverage", "release/1.4", "--env", ids["gpu"].hex[:12]).stdout)["here"]
    assert here["env"] == ids["gpu"].hex and here["warm"] == "partly"
    assert here["entries"] == 2 and here["compile"] == {"aot_autograd": 1, "inductor": 1}
    assert {g["key"] for g in here["graphs"]} == {"fgraphB", "aotA"}
    cpu = next(e for e in here["envs"] if e["env"] == ids["cpu"].hex)
    assert not cpu["matches"] and {d["field"] for d in cpu["diff"]} >= {"device", "gpu"}


def test_bad_input_is_one_line_and_changes_nothing(cas: Any, store_path: Path) -> None:
    seed(store_path)
    with Store(store_path) as s:
        before = s.refs.as_dict("refs/")
    for args, words in ((("coverage", "release/9.9"), "unknown revision 'release/9.9'"),
                        (("coverage", "release/1.4", "--env", "0123456789ab"), "unknown revision"),
                        (("coverage", "release/1.4", "--env", "release/1.4"), "is not an env")):
        proc = cas(*args, ok=False)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr
        assert proc.stderr.startswith("cas: error: ") and "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) <= 2  # the error, and a hint
    with Store(store_path) as s:
        assert s.refs.as_dict("refs/") == before
