"""What cas costs a process that compiles nothing, against plain python, in one run.

1. ``cas run --ref main -- python -c "import torch"`` against ``python -c "import torch"``
   (goal: within 0.5 s wall, medians);
2. ``cas hydrate main`` of a small recorded ref, interpreter start included (goal: within
   1.0 s wall), on a new machine (empty cache dir and empty ``TMPDIR``: the ~150 MB
   precompiled header is written) and with the header already there.

The ref is recorded once, first, by ``cas run --record main`` of a small MLP compile (the
demo's model). Measurements alternate between the ways, so load on the machine hits all
alike. Each is a fresh process; the table gives medians and every run.

    .venv/bin/python bench/bench_overhead.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CAS = str(Path(sys.executable).parent / "cas")
PROGRAM = ("import torch\nfrom cas.torch.demo import first_call\nfirst_call('mlp', small=True)\n")
WAYS = ("python import torch", "cas run import torch", "cas hydrate (new machine)",
        "cas hydrate (header present)")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def _machine(root: Path) -> dict[str, str]:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CAS_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(TMPDIR=str(root / "tmp"), TORCHINDUCTOR_CACHE_DIR=str(root / "cache"))
    return env


def run(runs: int, work: Path) -> dict[str, list[float]]:
    store = work / "store"
    print("recording the ref (one cold compile) ...", file=sys.stderr)
    _timed([CAS, "--store", str(store), "run", "--record", "main", "--", sys.executable, "-c", PROGRAM],
           _machine(work / "recorder"))
    out: dict[str, list[float]] = {w: [] for w in WAYS}
    # Bytecode for cas's own modules, as any installed package has it (pip compiles at
    # install; a shell with PYTHONDONTWRITEBYTECODE=1 never writes it for an editable
    # install, and each process would then compile ~40 modules from source: +0.2-0.5 s).
    import cas
    import cas_cli

    for package in (cas, cas_cli):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(package.__file__).parent)], check=True)
    # One warm-up of each, untimed: the page cache and cas's per-install env cache.
    _timed([sys.executable, "-c", "import torch"], _machine(work / "warmup"))
    _timed([CAS, "--store", str(store), "hydrate", "main"], _machine(work / "warmup"))
    present = _machine(work / "present")
    for i in range(runs):
        fresh = _machine(work / f"m{i}")
        out[WAYS[0]].append(_timed([sys.executable, "-c", "import torch"], fresh))
        out[WAYS[1]].append(_timed([CAS, "--store", str(store), "run", "--ref", "main", "--",
                                    sys.executable, "-c", "import torch"], fresh))
        out[WAYS[2]].append(_timed([CAS, "--store", str(store), "hydrate", "main"], _machine(work / f"h{i}")))
        shutil.rmtree(work / f"h{i}", ignore_errors=True)
        shutil.rmtree(Path(present["TORCHINDUCTOR_CACHE_DIR"]), ignore_errors=True)
        out[WAYS[3]].append(_timed([CAS, "--store", str(store), "hydrate", "main"], present))
        print("  " + " / ".join(f"{out[w][-1]:.2f}" for w in WAYS) + " s", file=sys.stderr)
    return out


def table(out: dict[str, list[float]]) -> str:
    med = {w: statistics.median(v) for w, v in out.items()}
    lines = ["| way | median wall | runs |", "|---|---|---|"]
    for w, v in out.items():
        lines.append(f"| {w} | **{med[w]:.2f} s** | " + ", ".join(f"{x:.2f}" for x in v) + " |")
    paired = statistics.median(b - a for a, b in zip(out[WAYS[0]], out[WAYS[1]], strict=True))
    lines.append(f"\ncas run over plain python: {med[WAYS[1]] - med[WAYS[0]]:+.2f} s between medians, "
                 f"{paired:+.2f} s median of the rounds' differences (goal ≤ +0.5 s); "
                 f"cas hydrate: {med[WAYS[2]]:.2f} s new machine, {med[WAYS[3]]:.2f} s header present "
                 "(goal ≤ 1.0 s)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cas-bench-overhead-"))
    try:
        out = run(args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))


def test_overhead_bench(benchmark: Any) -> None:
    """pytest entry (``make bench``): 3 alternating runs; medians in ``extra_info``."""
    work = Path(tempfile.mkdtemp(prefix="cas-bench-overhead-"))
    out: dict[str, list[float]] = {}
    try:
        benchmark.pedantic(lambda: out.update(run(3, work)), rounds=1, iterations=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {w: statistics.median(v) for w, v in out.items()}
    benchmark.extra_info.update(med)
    benchmark.extra_info["cas_run_minus_python_s"] = med[WAYS[1]] - med[WAYS[0]]


if __name__ == "__main__":
    main()
