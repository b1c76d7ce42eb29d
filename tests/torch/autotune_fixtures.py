"""The autotune tests' one cold compile, shared by their modules (one xdist group).

``tuned_once`` runs autotune_workload.py once per session (cached per process, like
livekit's ``recorded``): machine A, a store with a base commit, compiles the three-GEMM
model with ``mode="max-autotune"`` and records what torch measured; machine B is a clone
of A taken at the base commit. A's cache dir is cold for everything these tests count (no
timing file, no FX or AOT entries); it starts with the C++ code of the session's other
cold compile (``captured``) and shares its TMPDIR, for what is the same for any model: the
ISA-probe kernels and the precompiled header (that run's own kernels go unused). ``seed_kernels`` lets later processes of the
session reuse A's compiled C++ kernels instead of waiting on g++.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from torchkit import Captured, TorchEnv

from cas import history
from cas.objects import Entry, EntryKey, Env
from cas.store import Store

WORKLOAD = Path(__file__).with_name("autotune_workload.py")
MARKER = "CAS-AUTOTUNE "


@dataclass
class Tuned:
    a: Path  # machine A's store: base commit, then the recorded autotune commit
    b: Path  # machine B's store: a clone of A at the base commit
    base: str
    recorded: str
    run: dict[str, Any]
    cache: Path  # machine A's torch cache dir after the cold compile
    tmpdir: Path  # its TMPDIR: torch's default cache dir, with the precompiled header


_tuned: Tuned | None = None


def tuned_once(torch_env: TorchEnv, tmp_path_factory: pytest.TempPathFactory, captured: Captured) -> Tuned:
    """The session's cold max-autotune compile on machine A, recorded on top of a base commit."""
    global _tuned
    if _tuned is None:
        root = tmp_path_factory.mktemp("autotune")
        tmpdir = Path(torch_env.env["TMPDIR"])  # captured's: its precompiled header
        _copy_code(captured.cache_dir, root / "cache")
        a, b = root / "a", root / "b"
        with Store.init(a) as store:
            env = store.put_object(Env({"note": "base"}))
            blob = store.put(b"base")
            base = history.commit_changes(store, "main", {EntryKey(env, "pgo", "base"): Entry(blob, 4)}, "base")
        torch_env.cas(b, "clone", str(a), str(b), "--name", "a", "--trusted")
        run = torch_env.python(root / "cache", str(WORKLOAD), str(a), "--record", "main", marker=MARKER,
                               tmpdir=tmpdir, timeout=600)
        _tuned = Tuned(a, b, base.hex, run["recorded"]["commit"], run, root / "cache", tmpdir)
    return _tuned


def seed_kernels(tuned: Tuned, dst_cache: Path) -> Path:
    """Copy the cold run's compiled C++ kernels (torch's code cache dirs) into ``dst_cache``.

    Only code: no FX or AOT entries, no timing files (``cache/``), no ``.best_config``.
    Torch finds a kernel .so it would have built byte for byte the same and skips g++;
    what it benchmarks, picks and records is decided by timings alone, so a seeded dir
    is still an empty cache for everything these tests count.
    """
    return _copy_code(tuned.cache, dst_cache)


def _copy_code(src_cache: Path, dst_cache: Path) -> Path:
    """The code dirs of a torch cache dir (two-letter dirs: .py, .cpp, .so), no .best_config."""
    dst_cache.mkdir(parents=True, exist_ok=True)
    for d in src_cache.iterdir():
        if d.is_dir() and len(d.name) == 2:
            shutil.copytree(d, dst_cache / d.name, ignore=shutil.ignore_patterns("*.best_config"),
                            dirs_exist_ok=True)
    return dst_cache
