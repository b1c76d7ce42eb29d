"""`cas demo` end to end on a fresh store: cold compile with capture, then a warm start."""

from __future__ import annotations

import re
from pathlib import Path

from torchkit import TorchEnv

from cas import manifest
from cas.refs import load_commit, resolve
from cas.store import Store


def test_demo_starts_warm_from_the_store(torch_env: TorchEnv, tmp_path: Path) -> None:
    store = tmp_path / "fresh-store"  # does not exist yet: the demo creates it
    # A wide console keeps each table row on one line.
    proc = torch_env.cas(store, "demo", "--small", timeout=400, extra_env={"COLUMNS": "250"})
    torch_env.compiles()
    assert "1/2 compiling mlp cold" in proc.stderr and "2/2 fresh process" in proc.stderr
    out = proc.stdout
    assert re.search(r"cold .*fx graph hit 0 miss 1", out), out
    assert re.search(r"warm from cas .*fx graph hit 1 miss 0, aot autograd hit 1 miss 0", out), out
    commit = re.search(r"capture commit ([0-9a-f]{64}) on main", out)
    assert commit, out
    with Store(store) as s:
        assert resolve(s, "main").hex == commit.group(1)
        kinds = {k.kind for k, _ in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest)}
    assert {"inductor", "aot_autograd", "cpp_kernel"} <= kinds
