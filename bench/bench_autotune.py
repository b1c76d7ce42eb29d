"""Autotune: tuning wall time with 1 and 2 ranks, and the replay that benchmarks nothing.

Runs, each in fresh processes with empty torch cache dirs and TMPDIRs, the CPU workload of
the tests (tests/torch/autotune_workload.py: three Linear layers, ``mode="max-autotune"``,
``freezing=True``; ``--device cuda`` for the GPU model):

- **1 rank**: one process tunes every GEMM and records (``--ranks 1``);
- **2 ranks**: two gloo ranks each tune half and rank 0 commits the union (``--ranks 2``);
- **replay**: a fresh process hydrates the 2-rank commit and compiles (zero benchmarks).

Job wall time covers starting the rank processes, compiling, tuning and committing;
benchmarking is the slowest rank's time inside ``select_algorithm``'s benchmark step (the
part the ranks split). Each cell is the median of ``--runs``. Prints a Markdown table; ``--json FILE`` the raw numbers.

    .venv/bin/python bench/bench_autotune.py [--runs 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "tests" / "torch" / "autotune_workload.py"
MARKER = "CAS-AUTOTUNE "


def run(base: Path, name: str, *args: str) -> dict[str, Any]:
    (base / f"{name}-tmp").mkdir(parents=True)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(base / f"{name}-cache"), TMPDIR=str(base / f"{name}-tmp"))
    proc = subprocess.run([sys.executable, str(WORKLOAD), *args], env=env, capture_output=True, text=True,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode or not lines:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(MARKER):])  # type: ignore[no-any-return]


def once(base: Path, device: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for ranks in (1, 2):
        store = base / f"store{ranks}"
        subprocess.run([sys.executable, "-m", "cas_cli.main", "--store", str(store), "init"], check=True,
                       capture_output=True)
        got = run(base, f"r{ranks}", str(store), "--record", "main", "--ranks", str(ranks), "--device", device)
        out[f"{ranks} rank"] = got["wall_seconds"]
        out[f"{ranks} rank benchmarks"] = sum(r["benchmarks"]["select_algorithm_autotune"] for r in got["ranks"])
        # the tuning itself: the slowest rank's time in select_algorithm's benchmark step
        out[f"{ranks} rank tuning"] = max(r["benchmark_seconds"] for r in got["ranks"])
    replay = run(base, "replay", str(base / "store2"), "--hydrate", "main", "--device", device)
    out["replay"] = replay["seconds"]
    out["replay benchmarks"] = sum(replay["benchmarks"].values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = [once(Path(tempfile.mkdtemp(prefix="cas-bench-autotune-")), args.device) for _ in range(args.runs)]
    cells = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("| | 1 rank | 2 ranks | 2 / 1 |")
    print("|---|---|---|---|")
    for name in ("tuning", ""):
        a, b = cells[f"1 rank {name}".strip()], cells[f"2 rank {name}".strip()]
        label = "benchmarking (slowest rank)" if name else "job wall time (start, compile, tune, commit)"
        print(f"| {label} | {a:.1f} s | {b:.1f} s | {b / a:.2f}x |")
    print(f"\nbenchmarks run: {cells['1 rank benchmarks']:.0f} (1 rank), {cells['2 rank benchmarks']:.0f} "
          f"(2 ranks together); replay of the 2-rank commit: {cells['replay']:.1f} s, "
          f"{cells['replay benchmarks']:.0f} benchmarks")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
