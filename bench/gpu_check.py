"""The GPU autotune check, in one command (needs a CUDA GPU, a CUDA torch and Triton).

    python bench/gpu_check.py [--out DIR] [--device cpu]

(``--device cpu`` runs the same pipeline on the CPU workload of the tests: a dry run of
the script where no GPU is at hand.)

1. capture: a fresh process (empty TORCHINDUCTOR_CACHE_DIR and TMPDIR) compiles a model of
   three bf16 Linear layers with LayerNorm and GELU under ``mode="max-autotune"`` (GEMM
   templates via ``select_algorithm``, Triton ``.best_config`` for pointwise/reduction
   kernels, coordinate descent) and records the results: one ``autotune:`` commit.
2. push: ``cas push`` of that branch to a second store (the team remote, a local path),
   then ``cas clone --trusted`` of it into a third (the new machine).
3. replay: a fresh process with an empty cache dir and TMPDIR hydrates the cloned branch
   and compiles again; it must run zero autotune benchmarks
   (torch's ``select_algorithm_autotune``, ``coordesc_tuning_bench`` and
   ``combo_autotune_bench`` counters, and
   wrapped ``CachingAutotuner.benchmark_all_configs``) and pick the recorded GEMM choices.
4. figures: compile+first-call seconds of both runs, records by method, benchmarks run;
   printed and written to ``DIR/gpu_check.json``. Exit status 0 only if replay
   benchmarked nothing and picked every recorded choice.

It takes 1-3 minutes on an H100/H200 (most of it the capture's tuning).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "tests" / "torch" / "autotune_workload.py"
MARKER = "CAS-AUTOTUNE "


def cas(store: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "cas_cli.main", "--store", str(store), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"cas {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def workload(base: Path, name: str, store: Path, device: str, *args: str) -> dict[str, Any]:
    """One fresh process: its own empty torch cache dir and TMPDIR."""
    (base / f"{name}-tmp").mkdir()
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(base / f"{name}-cache"), TMPDIR=str(base / f"{name}-tmp"))
    proc = subprocess.run([sys.executable, str(WORKLOAD), str(store), "--device", device, *args],
                          env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])  # type: ignore[no-any-return]
    raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Where to keep stores and the JSON figures.")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    base = args.out or Path(tempfile.mkdtemp(prefix="cas-gpu-check-"))
    base.mkdir(parents=True, exist_ok=True)
    a, team, new = base / "a", base / "team", base / "new"
    cas(a, "init")
    cas(team, "init")
    tuned = workload(base, "capture", a, args.device, "--record", "main")
    cas(a, "remote", "add", "team", str(team))
    cas(a, "push", "team", "main")
    cas(new, "clone", str(team), str(new), "--trusted")
    replay = workload(base, "replay", new, args.device, "--hydrate", "main")
    shown = json.loads(cas(new, "--json", "autotune", "show"))
    methods: dict[str, int] = {}
    for row in shown:
        methods[row["method"]] = methods.get(row["method"], 0) + 1
    wrong = {k: v for k, v in replay["picked"].items() if tuned["picked"].get(k) != v}
    figures = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "capture_seconds": tuned["seconds"],
        "replay_seconds": replay["seconds"],
        "capture_benchmarks": tuned["benchmarks"],
        "replay_benchmarks": replay["benchmarks"],
        "records": len(shown),
        "records_by_method": methods,
        "recorded_commit": tuned["recorded"]["commit"],
        "hydrated": replay.get("hydrated"),
        "gemm_choices_checked": len(replay["picked"]),
        "gemm_choices_differing": wrong,
    }
    (base / "gpu_check.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    ok = not any(replay["benchmarks"].values()) and not wrong and len(shown) > 0
    print(f"gpu_check: {'PASS' if ok else 'FAIL'} (figures in {base / 'gpu_check.json'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
