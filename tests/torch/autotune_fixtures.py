"""The autotune tests' one cold compile, shared by their modules (one xdist group).

``tuned_once`` runs autotune_workload.py once per session (cached per process, like
livekit's ``recorded``): machine A, a store with a base commit, compiles the three-GEMM
model with ``mode="max-autotune"`` and records what torch measured; machine B is a clone
of A taken at the base commit. The same process runs under ``cas run --record main`` on a
third, empty store (``door``): the recording front door watches that compile too, so
test_autotune_doors.py needs no compile of its own (the workload records into A only, so
everything on ``door`` is ``cas run``'s). A's cache dir is cold for everything these tests
count (no timing file, no FX or AOT entries); it starts with the C++ code of the session's
other cold compile (``captured``) and shares its TMPDIR, for what is the same for any
model: the ISA-probe kernels and the precompiled header (that run's own kernels go
unused). ``seed_kernels`` and ``seed_header`` let later processes of the session reuse A's
compiled C++ kernels and precompiled header instead of waiting on g++.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from torchkit import Captured, TorchEnv
from torchkit import seed_kernels as copy_kernels

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
    door: Path  # the store `cas run --record main` recorded that compile into
    door_stderr: str  # what `cas run` said


_tuned: Tuned | None = None


def tuned_once(torch_env: TorchEnv, tmp_path_factory: pytest.TempPathFactory, captured: Captured) -> Tuned:
    """The session's cold max-autotune compile on machine A, recorded on top of a base commit."""
    global _tuned
    if _tuned is None:
        root = tmp_path_factory.mktemp("autotune")
        tmpdir = Path(torch_env.env["TMPDIR"])  # captured's: its precompiled header
        copy_kernels(captured.cache_dir, root / "cache")
        a, b = root / "a", root / "b"
        with Store.init(a) as store:
            env = store.objects.put_object(Env({"note": "base"}))
            blob = store.objects.put(b"base")
            base = history.commit_changes(store, "main", {EntryKey(env, "pgo", "base"): Entry(blob, 4)}, "base")
        torch_env.cas(b, "clone", str(a), str(b), "--name", "a", "--trusted")
        door = root / "door"
        proc = torch_env.cas(door, "run", "--record", "main", "--", sys.executable, str(WORKLOAD), str(a),
                             "--record", "main", cache_dir=root / "cache", tmpdir=tmpdir, timeout=900)
        (line,) = [x for x in proc.stdout.splitlines() if x.startswith(MARKER)]
        run = json.loads(line[len(MARKER):])
        _tuned = Tuned(a, b, base.hex, run["recorded"]["commit"], run, root / "cache", tmpdir, door, proc.stderr)
    return _tuned


def seed_kernels(tuned: Tuned, dst_cache: Path) -> Path:
    """Copy the cold run's compiled C++ kernels (torch's code cache dirs) into ``dst_cache``.

    Only code: no FX or AOT entries, no timing files (``cache/``), no ``.best_config``.
    Torch finds a kernel .so it would have built byte for byte the same and skips g++;
    what it benchmarks, picks and records is decided by timings alone, so a seeded dir
    is still an empty cache for everything these tests count.
    """
    return copy_kernels(tuned.cache, dst_cache)


def seed_header(tuned: Tuned, dst_tmpdir: Path) -> Path:
    """Give an empty TMPDIR a copy of the cold run's precompiled header, and nothing else.

    A fresh torch process precompiles ``cpp_prefix.h`` (~5 s of g++) under $TMPDIR before
    loading any C++ kernel, even one already on disk. The header is compiler output for
    any model (keyed by the preprocessed header, flags and compiler): no timings, no
    choices, no graph, so the TMPDIR is still empty for everything these tests count.
    """
    for src in tuned.tmpdir.glob("*/precompiled_headers"):
        # A copy, not a hard link: were g++ to rebuild the header in place, the session's
        # own would change under the other tests.
        shutil.copytree(src, dst_tmpdir / src.relative_to(tuned.tmpdir), ignore=shutil.ignore_patterns("locks"))
    assert {p.name for p in dst_tmpdir.glob("*/*")} == {"precompiled_headers"}
    return dst_tmpdir
