"""Helpers of the live-backend tests: run live_workload.py or ``cas`` in fresh processes.

The one cold compile (``recorded``) is shared by every test of the session through a
module-level cache: a fresh process enables cas with ``record="main"`` on an empty store
and an empty torch cache dir, so the store ends up holding exactly what the live backend
and its flush recorded. Tests that write copy that store first.

Every process gets the session's own ``TMPDIR`` (set by tests/torch/conftest.py), which
holds torch's default dir and so its precompiled header, never the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "live_workload.py"
CAS = str(Path(sys.executable).parent / "cas")
MARKER = "CAS-LIVE "


@dataclass
class Proc:
    """A finished process: exit code, output, and the workload's JSON line if any."""

    rc: int
    stdout: str
    stderr: str
    out: dict[str, Any] | None

    def cas_warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if "CasWarning" in line]

    def counter(self, group: str, name: str) -> int:
        assert self.out is not None, self.stderr[-3000:]
        return int(self.out["counters"].get(group, {}).get(name, 0))


#: The session's TMPDIR for torch processes (torch's default dir: precompiled headers).
TMPDIR: Path | None = None


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CAS_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(CAS_AUTHOR="tester@example", PYTHONWARNINGS="default")
    if TMPDIR is not None:
        env["TMPDIR"] = str(TMPDIR)
    env.update(extra)
    return env


def _finish(proc: subprocess.CompletedProcess[str]) -> Proc:
    out = None
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            out = json.loads(line[len(MARKER) :])
    return Proc(proc.returncode, proc.stdout, proc.stderr, out)


def workload(cache_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Proc:
    """Run live_workload.py in a fresh process with ``cache_dir`` as torch's cache dir."""
    full = dict(env or base_env(), TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
    proc = subprocess.run(
        [sys.executable, str(WORKLOAD), *args], env=full, capture_output=True, text=True, timeout=timeout
    )
    return _finish(proc)


def cas(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Proc:
    """Run the real ``cas`` command line."""
    proc = subprocess.run([CAS, *args], env=env or base_env(), capture_output=True, text=True, timeout=timeout)
    return _finish(proc)


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def seed_kernels(src_cache: Path, dst_cache: Path) -> Path:
    """Copy only the compiled C++ kernels of a cache dir (not its FX/AOT entries).

    Torch still misses its FX and AOT caches and asks the remote one (what the safety
    tests exercise), but does not spend seconds in g++ rebuilding identical kernels.
    """
    dst_cache.mkdir(parents=True, exist_ok=True)
    for d in src_cache.iterdir():
        if d.is_dir() and len(d.name) == 2:
            shutil.copytree(d, dst_cache / d.name)
    return dst_cache


@dataclass
class Recorded:
    """The session's cold run: its store, its cache dir and what it printed."""

    store: Path
    cache_dir: Path
    run: Proc


_recorded: Recorded | None = None


def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The cold run, done once per session (MLP inference and training, record=main)."""
    global _recorded
    if _recorded is None:
        base = tmp_path_factory.mktemp("live-recorded")
        store, cache = base / "store", base / "cache"
        run = workload(cache, "--store", str(store), "--record", "main", "--mode", "both", timeout=600)
        assert run.rc == 0 and run.out is not None, run.stderr[-4000:]
        _recorded = Recorded(store, cache, run)
    return _recorded
