"""Shared fixtures of the torch tests: workloads in fresh processes, and one session store.

Compiling is slow (seconds per model on a small machine), so the cold compiles happen
once per session (``captured``): one fresh process compiles every case into its own
cache dir and captures into a session store; tests then hydrate fresh cache dirs from it.

Every torch process runs with its own session ``TMPDIR`` (torch keeps precompiled headers
under it) and with ``CXX`` pointing at a shim around the real compiler that
logs each compile or link. "No C++ compiler ran" is then a fact read from the log, not a
guess from timings. All processes of a session use the same shim path, because the path
is part of the C++ kernels' cache keys.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import livekit
import pytest
from autotune_fixtures import Tuned, tuned_once
from torchkit import CASES, Captured, TorchEnv

from cas.store import Store


@pytest.fixture(scope="session")
def torch_env(tmp_path_factory: pytest.TempPathFactory) -> TorchEnv:
    base = tmp_path_factory.mktemp("torchenv")
    real = shutil.which(os.environ.get("CXX", "g++")) or "g++"
    log = base / "cxx.log"
    shim = base / "bin" / "g++"
    shim.parent.mkdir()
    # Log real work only (-c or -o): torch also runs the compiler for its version string.
    shim.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" -o "*|*" -c "*) echo "$*" >> "$CAS_TEST_CXX_LOG";; esac\n'
        f'exec "{real}" "$@"\n'
    )
    shim.chmod(0o755)
    env = dict(os.environ)
    # TMPDIR holds torch's *default* cache dir (precompiled headers): one per session,
    # so no test touches the user's, and a fresh one per "new machine".
    (base / "tmp").mkdir()
    env.update(CXX=str(shim), CAS_TEST_CXX_LOG=str(log), CAS_AUTHOR="tester@example",
               TMPDIR=str(base / "tmp"))
    env.pop("CAS_DIR", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return TorchEnv(env, log)


@pytest.fixture(scope="session", autouse=True)
def live_tmpdir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The TMPDIR of livekit's processes: one per test run, not the user's. Under xdist
    the workers share it (the dir above each worker's base temp dir is the run's): it
    holds what torch builds the same for any of these processes, its precompiled header
    above all (~10 s of g++), which torch builds under a file lock of its own, so two
    workers' processes build it once. No test counts that header or starts a new machine
    in this dir (those get an empty TMPDIR of their own)."""
    base = tmp_path_factory.getbasetemp()
    livekit.TMPDIR = (base if worker_id == "master" else base.parent) / "live-tmp"
    livekit.TMPDIR.mkdir(exist_ok=True)
    return livekit.TMPDIR


@pytest.fixture(scope="session")
def captured(torch_env: TorchEnv, tmp_path_factory: pytest.TempPathFactory) -> Captured:
    base = tmp_path_factory.mktemp("captured")
    store = base / "store"
    Store.init(store).close()
    mega = base / "mega.bin"
    cold = torch_env.run(base / "cold-cache", *CASES, "--small", "--capture", str(store),
                         "--save-megacache", str(mega), timeout=600)
    torch_env.compiles()
    return Captured(store, cold, mega, base / "cold-cache")


@pytest.fixture
def session_store(captured: Captured) -> Iterator[Store]:
    """The captured store, opened (read-mostly: tests write only to their own branches)."""
    s = Store(captured.store)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def tuned(torch_env: TorchEnv, captured: Captured, tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    """The session's cold max-autotune compile (autotune_fixtures.py). It starts from
    ``captured``'s model-independent C++ (ISA probes, precompiled header), so its users
    are in ``captured``'s xdist group, and each runs once per test run."""
    return tuned_once(torch_env, tmp_path_factory, captured)
