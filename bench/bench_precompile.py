"""Precompiled start: a new machine with and without dynamo's precompiled units.

For one model of ``cas.torch.demo`` (inference), two stores are recorded cold with
``cas run --record main``: one with ``--precompile``, one without. Then, alternating, ``--reps`` new machines per store (a fresh torch
cache dir and a fresh ``TMPDIR`` each) run ``cas run --ref main``. Each process reports
the seconds from ``torch.compile`` through its first call (loading the unit happens at
the compile call), the frames dynamo traced, and whether the output equals eager's.

    .venv/bin/python bench/bench_precompile.py [--model transformer] [--reps 2]

``--recording``: the cost of recording the units instead, ``--reps`` cold recordings
(``cas run --record main``, a new store and machine each) with and without
``--precompile``, alternating; the ratio is of same-run medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CAS = str(Path(sys.executable).parent / "cas")
PROGRAM = '''
import json, sys, time
import torch
from cas.torch.demo import build
net, x = build(sys.argv[1])
net.eval()
start = time.perf_counter()
compiled = torch.compile(net)
with torch.no_grad():
    y = compiled(x)
seconds = time.perf_counter() - start
with torch.no_grad():
    equal = torch.allclose(y, net(x), atol=1e-4)
from torch._dynamo.utils import counters
print("BENCH " + json.dumps({"seconds": seconds, "equal": equal, "traced": counters["frames"]["total"]}))
'''


def _run(work: Path, store: Path, model: str, *opts: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(dir=work))  # a new machine: empty TMPDIR, fresh cache dir
    start = time.perf_counter()
    proc = subprocess.run([CAS, "--store", str(store), "run", *opts, "--", sys.executable, "-c", PROGRAM, model],
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp), "HOME": str(tmp)},
                          capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH "))
    out: dict[str, Any] = json.loads(line[len("BENCH "):])
    out["process_s"] = time.perf_counter() - start
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="transformer", choices=["mlp", "transformer"])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--recording", action="store_true", help="measure the cost of recording the units")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-precompile-"))
    if args.recording:
        _recording(work, args.model, args.reps)
        return
    ways = {"precompile": ("--precompile",), "no precompile": ()}
    for name, opts in ways.items():
        cold = _run(work, work / name, args.model, "--record", "main", *opts)
        print(f"cold ({name}): {cold['seconds']:.2f} s, traced {cold['traced']}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    for _ in range(args.reps):
        for name, opts in ways.items():
            runs[name].append(_run(work, work / name, args.model, "--ref", "main", *opts))
    for name, rs in runs.items():
        assert all(r["equal"] for r in rs), f"{name}: an output differs from eager"
        print(f"new machine ({name}): compile + first call median "
              f"{statistics.median(r['seconds'] for r in rs):.2f} s, process median "
              f"{statistics.median(r['process_s'] for r in rs):.2f} s, traced {[r['traced'] for r in rs]}")


def _recording(work: Path, model: str, reps: int) -> None:
    """Cold recordings with and without the units, alternating (a new store each)."""
    ways = {"precompile": ("--precompile",), "no precompile": ()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    for i in range(reps):
        for name, opts in ways.items():
            runs[name].append(_run(work, work / f"{name}-{i}", model, "--record", "main", *opts))
    medians = {}
    for name, rs in runs.items():
        assert all(r["equal"] for r in rs), f"{name}: an output differs from eager"
        medians[name] = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "process_s")}
        print(f"cold recording ({name}): compile + first call median {medians[name]['seconds']:.2f} s, "
              f"process (with the flush) median {medians[name]['process_s']:.2f} s")
    on, off = medians["precompile"], medians["no precompile"]
    print(f"ratio precompile / none: compile + first call {on['seconds'] / off['seconds']:.3f}, "
          f"process {on['process_s'] / off['process_s']:.3f}")


if __name__ == "__main__":
    main()
