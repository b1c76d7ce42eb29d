"""Helpers of the torch tests (imported by conftest.py and the test modules).

``TorchEnv`` runs torch in fresh processes: workload.py, or the real ``cas`` command line,
with ``CXX`` pointing at a logging shim around the real compiler, so "no C++ compiler ran"
is read from a log rather than guessed from timings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workload.py"

#: The cases compiled once per session: (MODEL:MODE) of workload.py, small sizes.
CASES = ("mlp:infer", "mlp:train", "transformer:infer", "transformer:train", "ranged:infer")


@dataclass
class TorchEnv:
    """How to run torch processes in this session: env vars and the compiler log."""

    env: dict[str, str]
    cxx_log: Path

    def compiles(self) -> list[str]:
        """Compiler invocations logged so far (and clear the log)."""
        if not self.cxx_log.exists():
            return []
        lines = self.cxx_log.read_text().splitlines()
        self.cxx_log.unlink()
        return lines

    def run(self, cache_dir: Path, *args: str, timeout: float = 300,
            tmpdir: Path | None = None) -> dict[str, Any]:
        """Run workload.py in a fresh process with ``cache_dir`` as torch's cache dir
        (and ``tmpdir`` as $TMPDIR, i.e. torch's default dir: a fresh one is a new machine)."""
        return self.python(cache_dir, str(WORKLOAD), *args, marker="CAS-WORKLOAD ", timeout=timeout,
                           tmpdir=tmpdir)

    def python(self, cache_dir: Path, *args: str, marker: str, timeout: float = 300,
               tmpdir: Path | None = None) -> dict[str, Any]:
        env = dict(self.env, TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
        if tmpdir is not None:
            tmpdir.mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(tmpdir)
        proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
        for line in proc.stdout.splitlines():
            if line.startswith(marker):
                return json.loads(line[len(marker):])
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")

    def cas(self, store: Path, *args: str, ok: bool = True, cache_dir: Path | None = None,
            timeout: float = 300, extra_env: dict[str, str] | None = None,
            tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real ``cas`` command line on ``store``."""
        env = dict(self.env, **(extra_env or {}))
        if tmpdir is not None:
            tmpdir.mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(tmpdir)
        if cache_dir is not None:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
        proc = subprocess.run([str(Path(sys.executable).parent / "cas"), "--store", str(store), *args],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if ok != (proc.returncode == 0):
            raise AssertionError(f"cas {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc


@dataclass
class Captured:
    """The session store after one cold process compiled and captured every case."""

    store: Path
    cold: dict[str, Any]
    megacache: Path
    cache_dir: Path


def seed_kernels(src_cache: Path, dst_cache: Path) -> Path:
    """Copy only the compiled code of a torch cache dir (its two-letter dirs: .py, .cpp,
    .so) into ``dst_cache``: no FX or AOT entries, no timing files (``cache/``), no
    ``.best_config``. Torch then finds a kernel .so it would have built byte for byte the
    same and skips g++, but still misses its FX, AOT and autotune caches: for everything
    the tests count, the dir is still empty.
    """
    dst_cache.mkdir(parents=True, exist_ok=True)
    for d in src_cache.iterdir():
        if d.is_dir() and len(d.name) == 2:
            shutil.copytree(d, dst_cache / d.name, ignore=shutil.ignore_patterns("*.best_config"),
                            dirs_exist_ok=True)
    return dst_cache
