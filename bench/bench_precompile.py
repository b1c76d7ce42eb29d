"""Precompiled start: a new machine with and without dynamo's precompiled units.

For one model of ``cas.torch.demo`` (inference), two stores are recorded cold with
``cas run --record main``: one with ``--precompile``, one without. Then, alternating, ``--reps`` new machines per store (a fresh torch
cache dir and a fresh ``TMPDIR`` each) run ``cas run --ref main``. Each process reports
the seconds from ``torch.compile`` through its first call (loading the unit happens at
the compile call), the frames dynamo traced, and whether the output equals eager's.

    .venv/bin/python bench/bench_precompile.py [--model transformer] [--reps 2]
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
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-precompile-"))
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


if __name__ == "__main__":
    main()
