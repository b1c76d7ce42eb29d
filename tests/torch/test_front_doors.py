"""Every recording front door records what a new machine would otherwise rebuild.

``cas demo`` runs first, as a user would (the shared cold compile of this module): its
machine A compiles cold under ``cas run --record main`` into the module's store, pushes it
through a loopback ``cas serve``, and its machine B (empty torch cache dir, empty
``TMPDIR``) starts from a clone with ``cas run --ref main``. Both run under the logging
compiler, so that run proves the ``cas run`` door end to end.

The other doors then record on machine A, whose caches ``cas hydrate`` fills from that
store, into stores of their own: ``cas.torch.enable(record=...)``, ``backend="cas"`` and
``cas capture``. They find torch's files by torch's own names, so it does not matter
that A's files were not compiled there; what torch itself writes during a compile is
recorded by the ``cas run`` door here, and by the enable door and ``backend="cas"`` in
test_live.py and test_backend.py (livekit's cold run), and read by ``cas capture`` in
test_capture_hydrate.py.

Each such store must serve exactly the entries of the ``cas run`` recording (key, blob,
guards), and one of them (the enable door's) starts a program on a new machine B too (an
empty torch cache dir *and* an empty ``TMPDIR``, the store cloned over a path remote) with
``cas run --ref main``. On both new machines B torch must hit its FX and AOT caches and
run no compiler beyond its per-process probes (``-v``/``--version``) and the one
preprocessing of its header include (``-E``), which it does whatever is cached.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from machinekit import PROGRAM, Machine, calls_by_kind, door_output, make_shim, read_calls

from cas import manifest
from cas.history import commit_changes
from cas.objects import Entry, EntryKey
from cas.refs import load_commit, resolve
from cas.store import Store

DOORS = ("cas-run", "enable", "backend", "capture")


@pytest.fixture(scope="module")
def shim_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_shim(tmp_path_factory.mktemp("doors"))


@pytest.fixture(scope="module")
def demo(shim_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``cas --json demo --small`` on a store that does not exist yet (its ``cas run
    --record`` creates it); the compiler calls of its machines A and B, told apart by the
    ``TMPDIR`` the demo gives each (``.../a/tmp``, ``.../b/tmp``)."""
    base = tmp_path_factory.mktemp("demo")
    runner = Machine(base / "runner", shim_env)  # the demo makes its machines under its TMPDIR
    store = base / "stores" / "cas-run"
    data: dict[str, Any] = json.loads(runner.cas(store, "--json", "demo", "--small").stdout)
    calls = read_calls(runner.log)
    for name in ("a", "b"):
        data[f"machine_{name}"]["calls"] = calls_by_kind(
            [c for c in calls if Path(c[1]).parts[-2:] == (name, "tmp")])
    data["store"] = store
    # What cas computed of this torch install: reused by the machines below that make no
    # claim about a new machine (each new machine B keeps an empty one).
    data["env_cache"] = runner.env_cache
    return data


@pytest.fixture(scope="module")
def machine_a(demo: dict[str, Any], shim_env: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Machine A of the other doors: an empty torch cache dir and ``TMPDIR``, which ``cas
    hydrate`` fills from the store the demo recorded."""
    a = Machine(tmp_path_factory.mktemp("machine-a") / "a", shim_env, env_cache=demo["env_cache"])
    hydrated = json.loads(a.cas(demo["store"], "--json", "hydrate", "main").stdout)
    a.calls()
    return {"machine": a, "stores": {"cas-run": demo["store"]}, "hydrated": hydrated}


def _record(door: str, ma: dict[str, Any]) -> Path:
    a: Machine = ma["machine"]
    if door in ma["stores"]:
        return Path(ma["stores"][door])
    store = a.root.parent / "stores" / door
    if door == "enable":
        a.program("--enable", str(store))
    elif door == "backend":
        proc = a.run(sys.executable, str(PROGRAM), "--backend", "cas", extra={"CAS_DIR": str(store)})
        # backend="cas" ends by saying how warm the start was (A's hydrated caches: fully).
        assert "cas: start: fully warm" in proc.stderr, proc.stderr[-3000:]
    else:
        a.cas(store, "init")
        a.cas(store, "capture", "--cache-dir", str(a.root / "cache"), "-m", "after the fact")
    # A's caches came from `cas hydrate` alone: the programs above compiled nothing.
    assert a.calls()["compile"] == []
    ma["stores"][door] = store
    return store


def _served(store: Path) -> set[tuple[EntryKey, Any, str | None]]:
    """What hydrate would write from ``store``'s main: every entry's key, blob and guards."""
    with Store(store) as s:
        root = load_commit(s, resolve(s, "main")).manifest
        return {(k, e.blob, e.guards) for k, e in manifest.entries(s, root)}


def _kinds(store: Path) -> dict[str, int]:
    with Store(store) as s:
        root = load_commit(s, resolve(s, "main")).manifest
        out: dict[str, int] = {}
        for k, _ in manifest.entries(s, root):
            out[k.kind] = out.get(k.kind, 0) + 1
    return out


def test_the_shim_is_invisible_to_torch(shim_env: dict[str, str]) -> None:
    # torch hashes `g++ -v` into C++ keys: the logging shim must print what g++ prints.
    plain = subprocess.run(["g++", "-v"], capture_output=True, text=True,
                           env=dict(shim_env, PATH=shim_env["CAS_TEST_REAL_PATH"]))
    shimmed = subprocess.run(["g++", "-v"], capture_output=True, text=True, env=shim_env)
    assert plain.stderr and shimmed.stderr == plain.stderr


def test_the_cold_compile_really_compiled(demo: dict[str, Any]) -> None:
    # Otherwise "no compile on B" would prove nothing.
    a = demo["machine_a"]
    assert a["calls"]["compile"], a["summary"]
    assert a["counters"]["inductor"]["fxgraph_cache_miss"] >= 1 and a["cxx_builds"] >= 1


def test_demo_records_pushes_clones_and_starts_warm(demo: dict[str, Any]) -> None:
    # `cas demo`, the README workflow over a loopback server; its machine B is also the
    # new machine of the `cas run` door: every lookup hit, no C++ built or compiled, and
    # the summary says the start was warm.
    b = demo["machine_b"]
    ind, aot = b["counters"]["inductor"], b["counters"]["aot_autograd"]
    assert ind.get("fxgraph_cache_miss", 0) == 0 and ind["fxgraph_cache_hit"] >= 1
    assert aot.get("autograd_cache_miss", 0) == 0 and aot["autograd_cache_hit"] >= 1
    assert b["cxx_builds"] == 0 and b["summary"]["warmth"]["fully_warm"] is True
    assert b["summary"]["warmth"]["headline"] == "start: fully warm"
    assert b["calls"]["compile"] == [] and len(b["calls"]["preprocess"]) <= 1, b["calls"]
    assert b["calls"]["probe"]  # the log does see machine B's compiler runs
    assert demo["bytes_moved"]["push"] > 0 and demo["bytes_moved"]["clone"] > 0
    assert set(_kinds(demo["store"])) >= {"inductor", "aot_autograd", "cpp_kernel", "cpp_pch"}


@pytest.mark.parametrize("door", DOORS)
def test_door_records_headers_kernels_and_isa_probe(door: str, machine_a: dict[str, Any]) -> None:
    store = _record(door, machine_a)
    kinds = _kinds(store)
    assert kinds.get("inductor", 0) >= 1 and kinds.get("aot_autograd", 0) >= 1
    assert kinds.get("cpp_pch", 0) >= 1
    # The model's kernels and the ISA-probe kernel.
    assert kinds.get("cpp_kernel", 0) >= 2
    if door != "cas-run":  # that store is the reference itself
        # Exactly what hydrate would write from the `cas run` recording, which started the
        # demo's new machine B fully warm: a new machine starts from this store as it did
        # (test_a_new_machine_compiles_nothing runs one, from the enable door's store).
        assert _served(store) == _served(ma_store(machine_a))


def test_a_new_machine_compiles_nothing(machine_a: dict[str, Any], shim_env: dict[str, str],
                                        tmp_path: Path) -> None:
    # The demo's machine B started from the `cas run` door's store; this one starts from
    # the enable door's (the others' stores serve the same entries: see above), and runs
    # the door program itself.
    store = _record("enable", machine_a)
    clone = tmp_path / "store"
    b = Machine(tmp_path / "b", shim_env)
    # Filled over a transport (a path remote), as a new machine is: commits arrive marked
    # as received, and only a trusted remote's reach torch.
    # All envs (the README's `--env current` is the demo's clone): computing the env
    # would cost the clone a torch import that the program then pays again.
    cloned = b.cas(clone, "clone", str(store), str(clone), "--trusted")
    assert cloned.returncode == 0, cloned.stderr[-3000:]
    proc = b.cas(clone, "run", "--ref", "main", "--", sys.executable, str(PROGRAM))
    out, calls = door_output(proc), b.calls()
    ind, aot = out["counters"]["inductor"], out["counters"]["aot_autograd"]
    assert ind.get("fxgraph_cache_hit", 0) >= 1 and ind.get("fxgraph_cache_miss", 0) == 0
    assert aot.get("autograd_cache_hit", 0) >= 1 and aot.get("autograd_cache_miss", 0) == 0
    assert calls["compile"] == [], proc.stderr[-3000:]
    assert "cas run: start: fully warm" in proc.stderr, proc.stderr[-3000:]
    # Listed apart, not compiles: version probes, and the one preprocessing of the
    # header include torch does in every process that loads a C++ kernel. cas ran that
    # check and the ISA probes early, in its thread (cas.torch.prewarm), and torch's own
    # calls found the answers: the include was preprocessed once, each ISA probed once.
    # On a CPU where torch finds AVX-512 cas leaves both to torch (docs/torch.md), which
    # still preprocesses once.
    pre = out["prewarm"]
    assert len(calls["preprocess"]) == 1, calls["preprocess"]
    if "avx512" in out["x86_isas"]:
        assert pre is None, pre
        return
    assert pre["header"] is True and pre["probed"] and "error" not in pre, pre
    assert out["isa_checks"] == len(pre["probed"]), (out["isa_checks"], pre)


def test_cas_run_summary_json_of_the_recording(demo: dict[str, Any]) -> None:
    summary = demo["machine_a"]["summary"]  # the demo's `cas --json run --record` summary
    assert summary["recorded"] >= 4 and summary["commits"]
    # The torch process compiled, so it probed torch's internals: nothing missing.
    assert summary["compat"]["supported"] is True and summary["compat"]["missing"] == []
    # The cold start was not warm, and the summary says what torch built.
    warmth = summary["warmth"]
    assert warmth["fully_warm"] is False
    assert {r["kind"] for r in warmth["rebuilds"]} >= {"cpp_pch", "cpp_kernel", "inductor"}
    pch = next(r for r in warmth["rebuilds"] if r["kind"] == "cpp_pch")
    assert "precompiled header" in pch["line"] and "s of g++" in pch["line"]


def _without(store: Path, dest: Path, kind: str) -> Path:
    """A copy of ``store`` whose main lacks the entries of ``kind``."""
    shutil.copytree(store, dest)
    with Store(dest) as s:
        root = load_commit(s, resolve(s, "main")).manifest
        gone: dict[EntryKey, Entry | None] = {k: None for k, _ in manifest.entries(s, root) if k.kind == kind}
        assert gone
        commit_changes(s, "main", gone, f"drop {kind}")
    return dest


def test_hydrate_says_what_torch_will_rebuild(machine_a: dict[str, Any], shim_env: dict[str, str],
                                             tmp_path: Path) -> None:
    # Machine A's torch caches were empty when `cas hydrate` filled them from the full
    # store: it said the start would be fully warm.
    assert machine_a["hydrated"]["warmth"]["fully_warm"] is True
    store = _without(ma_store(machine_a), tmp_path / "no-pch", "cpp_pch")
    b = Machine(tmp_path / "b2", shim_env, env_cache=machine_a["machine"].env_cache)
    res = json.loads(b.cas(store, "--json", "hydrate", "main").stdout)["warmth"]
    assert res["fully_warm"] is False
    assert [r["line"] for r in res["rebuilds"]] == [
        "precompiled header for this CPU not in the store: ~10 s of g++"]
    text = b.cas(store, "hydrate", "main").stdout
    assert "start: not fully warm" in text and "precompiled header for this CPU not in the store" in text


def test_another_toolchain_is_reported_per_entry_class(machine_a: dict[str, Any], shim_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    # A wrapper run by full path: `g++ -v` then names another driver, and torch, which
    # hashes that output into C++ file names, would miss every C++ entry.
    other = tmp_path / "tools" / "c++"
    other.parent.mkdir()
    other.write_text(f'#!/bin/sh\nexec {shutil.which("g++", path=shim_env["CAS_TEST_REAL_PATH"])} "$@"\n')
    other.chmod(0o755)
    b = Machine(tmp_path / "b", dict(shim_env, CXX=str(other)), env_cache=machine_a["machine"].env_cache)
    store = ma_store(machine_a)
    explained = b.cas(store, "explain", "--current").stdout
    lines = [ln.strip() for ln in explained.splitlines() if "will not hit" in ln]
    assert len(lines) == 2, explained  # one per entry class: kernels, headers
    assert any("C++ kernel" in ln and "built with g++" in ln and str(other) in ln for ln in lines), lines
    assert any("precompiled header built with g++" in ln for ln in lines), lines
    run = b.cas(store, "run", "--ref", "main", "--", sys.executable, "-c", "import torch")
    expected = [ln for ln in run.stderr.splitlines() if "expected:" in ln]
    assert len(expected) == 2 and all("torch names C++ files by its compiler" in ln for ln in expected), run.stderr


def ma_store(ma: dict[str, Any]) -> Path:
    return Path(ma["stores"]["cas-run"])
