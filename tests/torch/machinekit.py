"""Machines for the front-door tests: a logging compiler that torch cannot tell apart from
the real one, and "machines" (a torch cache dir plus a ``TMPDIR``) to run programs on.

The compiler shim is put first on ``PATH`` as ``g++`` (``CXX`` unset, so torch runs
``g++`` as it would without the shim) and re-executes the real compiler as ``g++`` with
the shim's own dir removed from ``PATH``: ``g++ -v`` prints exactly what the real one
prints, so the C++ keys torch derives from it (ISA probe, precompiled headers) are those
of a machine without the shim. Each call is logged as ``probe`` (``-v``/``--version``),
``preprocess`` (``-E``, torch hashes its header include once per process) or ``compile``
(anything else: real work), with the caller's ``TMPDIR``: machines that share a log (the
two that ``cas demo`` makes itself) are told apart by it.
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

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "door_program.py"
CAS = str(Path(sys.executable).parent / "cas")


def make_shim(base: Path) -> dict[str, str]:
    """Write the logging ``g++`` under ``base`` and return the env that uses it."""
    real_path = os.environ.get("PATH", "")
    real = shutil.which("g++", path=real_path)
    assert real, "no g++ on PATH"
    shim_dir = base / "shim"
    shim_dir.mkdir(parents=True)
    shim = shim_dir / "g++"
    shim.write_text(
        "#!/bin/bash\n"
        'case " $* " in\n'
        '  *" -v "*|*" --version "*|*" -dumpversion "*|*" -dumpfullversion "*) kind=probe;;\n'
        '  *" -E "*) kind=preprocess;;\n'
        "  *) kind=compile;;\n"
        "esac\n"
        'printf "%s\\t%s\\t%s\\n" "$kind" "${TMPDIR:-}" "$*" >> "$CAS_TEST_CXX_LOG"\n'
        f'PATH="$CAS_TEST_REAL_PATH" exec -a g++ "{real}" "$@"\n'
    )
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CAS_DIR", "TORCHINDUCTOR_CACHE_DIR", "CXX", "CAS_REF", "CAS_RECORD")}
    env.update(PATH=f"{shim_dir}{os.pathsep}{real_path}", CAS_TEST_REAL_PATH=real_path,
               CAS_TEST_CXX_LOG=str(base / "cxx.log"), CAS_AUTHOR="tester@example")
    return env


@dataclass
class Machine:
    """A torch cache dir and a ``TMPDIR`` (torch's default dir: precompiled headers)."""

    root: Path
    env: dict[str, str]
    #: cas's env cache (what it computed once per torch install): the machine's own, empty,
    #: unless given; only a machine that makes no claim about being new may share another's.
    env_cache: Path | None = None

    def __post_init__(self) -> None:
        (self.root / "cache").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.env_cache = self.env_cache or self.root / "env-cache"
        self.env = dict(self.env, TORCHINDUCTOR_CACHE_DIR=str(self.root / "cache"),
                        TMPDIR=str(self.root / "tmp"), CAS_TORCH_ENV_CACHE=str(self.env_cache))

    @property
    def log(self) -> Path:
        return Path(self.env["CAS_TEST_CXX_LOG"])

    def calls(self) -> dict[str, list[str]]:
        """Compiler calls logged so far, by kind (and clear the log)."""
        return calls_by_kind(read_calls(self.log))

    def run(self, *args: str, extra: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(args), env=dict(self.env, **(extra or {})), capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}")
        return proc

    def cas(self, store: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(CAS, "--store", str(store), *args, **kw)

    def program(self, *args: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        """Run door_program.py (plain python); its JSON line."""
        return door_output(self.run(sys.executable, str(PROGRAM), *args, extra=extra))


def read_calls(log: Path) -> list[tuple[str, str, str]]:
    """The compiler calls logged so far, as (kind, TMPDIR, arguments); clears the log."""
    if not log.exists():
        return []
    calls = [(kind, tmpdir, args) for kind, tmpdir, args in
             (line.split("\t", 2) for line in log.read_text().splitlines())]
    log.unlink()
    return calls


def calls_by_kind(calls: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"probe": [], "preprocess": [], "compile": []}
    for kind, _, args in calls:
        out.setdefault(kind, []).append(args)
    return out


def door_output(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    for line in proc.stdout.splitlines():
        if line.startswith("CAS-DOOR "):
            out: dict[str, Any] = json.loads(line[len("CAS-DOOR "):])
            return out
    raise AssertionError(f"no CAS-DOOR line:\n{proc.stdout}\n{proc.stderr[-4000:]}")
