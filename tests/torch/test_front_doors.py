"""Every recording front door records what a new machine would otherwise rebuild.

Machine A compiles once, cold, under ``cas run --record main`` (the shared cold compile
of this module). The other doors then record on machine A into stores of their own:
``cas.torch.enable(record=...)``, ``backend="cas"`` and ``cas capture``. They find
torch's files by torch's own names, so it does not matter that A's files are old.

Each store then starts a program on a new machine B (an empty torch cache dir *and* an
empty ``TMPDIR``) with ``cas run --ref main``: torch must hit its FX and AOT caches and
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
from doorkit import PROGRAM, Machine, door_output, make_shim

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
def machine_a(shim_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Machine A: one cold compile recorded by ``cas run --record main`` into a store."""
    base = tmp_path_factory.mktemp("machine-a")
    a = Machine(base / "a", shim_env)
    store = base / "stores" / "cas-run"
    proc = a.cas(store, "--json", "run", "--record", "main", "--", sys.executable, str(PROGRAM))
    return {"machine": a, "stores": {"cas-run": store}, "cold": door_output(proc), "calls": a.calls(),
            "summary": proc.stderr}


def _record(door: str, ma: dict[str, Any]) -> Path:
    a: Machine = ma["machine"]
    if door in ma["stores"]:
        return Path(ma["stores"][door])
    store = a.root.parent / "stores" / door
    if door == "enable":
        a.program("--enable", str(store))
    elif door == "backend":
        proc = a.run(sys.executable, str(PROGRAM), "--backend", "cas", extra={"CAS_DIR": str(store)})
        # backend="cas" ends by saying how warm the start was (A's own caches: fully).
        assert "cas: start: fully warm" in proc.stderr, proc.stderr[-3000:]
    else:
        a.cas(store, "init")
        a.cas(store, "capture", "--cache-dir", str(a.root / "cache"), "-m", "after the fact")
    a.calls()
    ma["stores"][door] = store
    return store


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


def test_the_cold_compile_really_compiled(machine_a: dict[str, Any]) -> None:
    # Otherwise "no compile on B" would prove nothing.
    assert machine_a["calls"]["compile"], machine_a["summary"][-3000:]
    counters = machine_a["cold"]["counters"]
    assert counters["inductor"]["fxgraph_cache_miss"] >= 1


@pytest.mark.parametrize("door", DOORS)
def test_door_records_headers_kernels_and_isa_probe(door: str, machine_a: dict[str, Any]) -> None:
    kinds = _kinds(_record(door, machine_a))
    assert kinds.get("inductor", 0) >= 1 and kinds.get("aot_autograd", 0) >= 1
    assert kinds.get("cpp_pch", 0) >= 1
    # The model's kernels and the ISA-probe kernel.
    assert kinds.get("cpp_kernel", 0) >= 2


@pytest.mark.parametrize("door", DOORS)
def test_a_new_machine_compiles_nothing(door: str, machine_a: dict[str, Any],
                                        shim_env: dict[str, str], tmp_path: Path) -> None:
    store = _record(door, machine_a)
    clone = tmp_path / "store"
    b = Machine(tmp_path / "b", shim_env)
    # Filled over a transport (a path remote), as a new machine is: commits arrive marked
    # as received, and only a trusted remote's reach torch.
    cloned = b.cas(clone, "clone", str(store), str(clone), "--env", "current", "--trusted")
    assert cloned.returncode == 0, cloned.stderr[-3000:]
    proc = b.cas(clone, "run", "--ref", "main", "--", sys.executable, str(PROGRAM))
    out, calls = door_output(proc), b.calls()
    ind, aot = out["counters"]["inductor"], out["counters"]["aot_autograd"]
    assert ind.get("fxgraph_cache_hit", 0) >= 1 and ind.get("fxgraph_cache_miss", 0) == 0
    assert aot.get("autograd_cache_hit", 0) >= 1 and aot.get("autograd_cache_miss", 0) == 0
    assert calls["compile"] == [], proc.stderr[-3000:]
    assert "cas run: start: fully warm" in proc.stderr, proc.stderr[-3000:]
    # Listed apart, not compiles: version probes, and the one preprocessing of the
    # header include torch does in every process that loads a C++ kernel.
    assert len(calls["preprocess"]) <= 1, calls["preprocess"]


def test_cas_run_summary_json_of_the_recording(machine_a: dict[str, Any]) -> None:
    lines = [ln for ln in machine_a["summary"].splitlines() if ln.startswith("{")]
    summary = json.loads(lines[-1])
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
    b = Machine(tmp_path / "b", shim_env)
    full = b.cas(ma_store(machine_a), "--json", "hydrate", "main")
    assert json.loads(full.stdout)["warmth"]["fully_warm"] is True
    store = _without(ma_store(machine_a), tmp_path / "no-pch", "cpp_pch")
    b = Machine(tmp_path / "b2", shim_env)
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
    b = Machine(tmp_path / "b", dict(shim_env, CXX=str(other)))
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
