"""`cas demo` end to end on a fresh store: the README workflow over a loopback server."""

from __future__ import annotations

import json
from pathlib import Path

from torchkit import TorchEnv

from cas import manifest
from cas.refs import load_commit, resolve
from cas.store import Store


def test_demo_records_pushes_clones_and_starts_warm(torch_env: TorchEnv, tmp_path: Path) -> None:
    store = tmp_path / "fresh-store"  # does not exist yet: the demo's `cas run --record` creates it
    proc = torch_env.cas(store, "--json", "demo", "--small", timeout=600)
    torch_env.compiles()
    data = json.loads(proc.stdout)
    a, b = data["machine_a"], data["machine_b"]
    assert a["counters"]["inductor"]["fxgraph_cache_miss"] >= 1 and a["cxx_builds"] >= 1
    # Machine B: every lookup hit, no C++ built, and the summary says the start was warm.
    assert b["counters"]["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert b["counters"]["inductor"]["fxgraph_cache_hit"] >= 1
    assert b["counters"]["aot_autograd"]["autograd_cache_hit"] >= 1
    assert b["cxx_builds"] == 0 and b["summary"]["warmth"]["fully_warm"] is True
    assert data["bytes_moved"]["push"] > 0 and data["bytes_moved"]["clone"] > 0
    with Store(store) as s:
        kinds = {k.kind for k, _ in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest)}
    assert {"inductor", "aot_autograd", "cpp_kernel", "cpp_pch"} <= kinds
