"""``cas run -- CMD``: a program that knows nothing of cas starts warm and is recorded."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest
from livekit import SHARES_RECORDED, base_env, cas, recorded, served
from torchkit import seed_kernels

from cas import manifest
from cas.refs import load_commit, resolve
from cas.store import Store

pytestmark = SHARES_RECORDED


def _keys(store: Store, ref: str) -> set:
    return {k for k, _ in manifest.entries(store, load_commit(store, resolve(store, ref)).manifest)}


def test_cas_run_serves_records_and_passes_the_exit_code_through(tmp_path_factory: pytest.TempPathFactory) -> None:
    # livekit's served run (its program also flushes explicitly: test_live asserts that;
    # recording at exit with no help from the program: the inductor-first test below).
    store_path, run = served(tmp_path_factory)
    assert run.rc == 3, run.stderr[-3000:]
    assert run.out is not None and run.out["session"]["hydrated"]["written"] >= 4
    assert run.counter("inductor", "fxgraph_cache_hit") == 1
    assert run.counter("inductor", "fxgraph_cache_miss") == 1
    summary = [line for line in run.stderr.splitlines() if line.startswith("cas run:")]
    assert len(summary) == 3, run.stderr[-3000:]
    assert "fx graph cache 1 hit / 1 miss" in summary[0]
    assert "recorded on exp" in summary[0]
    # mlp-wide was compiled: the start was not fully warm, and the summary says so.
    assert summary[1].startswith("cas run: start: not fully warm"), summary
    assert "1 FX graph not in the store, compiled" in run.stderr
    with Store(store_path) as store:
        new = _keys(store, "exp") - _keys(store, "main")
        assert {k.kind for k in new} >= {"inductor", "aot_autograd"}
    _check_miss_report(store_path, summary[2], new)


def _check_miss_report(store_path: Path, line: str, new: set) -> None:
    """--report-misses committed what missed against main, and `cas coverage main` sums
    it: mlp-wide's FX graph missed, by its key; exp names the program that recorded it."""
    from cas import coverage

    host = coverage.report_branch(platform.node())
    assert line == f"cas run: miss report committed on {host} (share it: cas push origin {host})"
    got = json.loads(cas("--json", "--store", str(store_path), "coverage", "main").stdout)["misses"]
    assert got["reports"] == 1 and got["hosts"] == [platform.node()]
    assert got["lookups"]["inductor"] == {"hits": 1, "misses": 1}
    assert {m["key"] for m in got["missed"] if m["kind"] == "inductor"} == {
        k.key for k in new if k.kind == "inductor"}
    recorders = json.loads(cas("--json", "--store", str(store_path), "coverage", "exp").stdout)["recorders"]
    assert "live_workload.py" in {r["name"] for r in recorders}


def test_cas_run_chains_an_existing_sitecustomize_and_spares_non_torch_programs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = 'yes'\n")
    probe = "import os, sys; print('PROBE', os.environ.get('CHAINED'), 'torch' in sys.modules)"
    run = cas("--store", str(tmp_path / "store"), "run", "--", sys.executable, "-c", probe,
              env=base_env(PYTHONPATH=str(site)))
    assert run.rc == 0, run.stderr
    assert "PROBE yes False" in run.stdout
    assert "no process of the command imported torch" in run.stderr


def test_cas_run_of_a_missing_command_is_one_clear_error(tmp_path: Path) -> None:
    run = cas("--store", str(tmp_path / "store"), "run", "--", "no-such-program-xyz")
    assert run.rc == 2
    assert run.stderr.strip() == "cas: error: command not found: no-such-program-xyz"


# Inductor's modules first: torch imports dynamo from inside them, while they are still
# half imported, so the live backend cannot be installed right then (it was, before,
# left out with a warning: nothing was served or recorded through torch's caches).
_INDUCTOR_FIRST = """\
import torch._inductor.config
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
with torch.no_grad():
    torch.compile(net)(torch.randn(8, 32))
print("compiled")
"""


def test_a_program_importing_inductor_first_is_still_served_and_recorded(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    # livekit's MLP, on an empty store and a cache dir holding only the recorded run's
    # C++ kernels: torch misses every FX and AOT lookup, without waiting on g++.
    cache = seed_kernels(recorded(tmp_path_factory).cache_dir, tmp_path / "cache")
    store_path = tmp_path / "store"
    run = cas("--json", "--store", str(store_path), "run", "--record", "main", "--no-hydrate", "--",
              sys.executable, "-c", _INDUCTOR_FIRST, env=base_env(TORCHINDUCTOR_CACHE_DIR=str(cache)))
    assert run.rc == 0, run.stderr[-3000:]
    assert "compiled" in run.stdout
    assert run.cas_warnings() == [], run.stderr[-3000:]
    with Store(store_path) as store:
        kinds = {k.kind for k in _keys(store, "main")}
    # The FX graph and AOTAutograd entries come only through the live backend's puts.
    assert {"inductor", "aot_autograd"} <= kinds, kinds
