"""Invariant 9 with a real compile: machine A compiles two functions, captures, tags
v1 and revokes one function's FX graph; machine B (empty cache dir and TMPDIR) clones,
hydrates v1 and runs both: the revoked graph is recompiled, the other one is a hit.

Machine A's cache dir is empty; its TMPDIR is the session's (tests/torch/conftest.py), so
it finds torch's precompiled header there if another process of this worker built it:
nothing here counts A's C++ builds."""

from __future__ import annotations

from pathlib import Path

from torchkit import HERE, TorchEnv

from cas.store import Store

PROGRAM = HERE / "revoke_program.py"


def test_a_revoked_graph_is_recompiled_on_the_machine_that_pulls_it(torch_env: TorchEnv, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    Store.init(a).close()
    cold = torch_env.python(tmp_path / "a-cache", str(PROGRAM), "cold", str(a), marker="CAS-REVOKE ",
                            timeout=600)
    assert cold["f"]["keys"] and cold["g"]["keys"] and cold["capture"]["commit"]
    torch_env.cas(a, "tag", "v1", "main", "-m", "release")
    bad = cold["g"]["keys"][0]
    torch_env.cas(a, "revoke", bad, "-m", "g gives wrong results")
    torch_env.cas(a, "clone", str(a), str(b), "--trusted")

    warm = torch_env.python(tmp_path / "b-cache", str(PROGRAM), "warm", str(b), "v1", marker="CAS-REVOKE ",
                            tmpdir=tmp_path / "b-tmp", timeout=600)
    assert warm["hydrate"]["revoked"] >= 1
    f, g = warm["f"]["inductor"], warm["g"]["inductor"]
    assert f.get("fxgraph_cache_hit", 0) >= 1 and f.get("fxgraph_cache_miss", 0) == 0
    assert g.get("fxgraph_cache_miss", 0) >= 1 and g.get("fxgraph_cache_hit", 0) == 0
    assert bad in warm["g"]["keys"]  # recompiled here: the same graph, under the same key
    text = torch_env.cas(b, "explain", bad, "--ref", "v1").stdout
    assert "revoked by tester@example" in text and "g gives wrong results" in text
