"""A torch.compile workload run in a fresh process by the torch tests and the benchmark.

Runs one or more cases ``MODEL:MODE`` (models of ``cas.torch.demo.build``, plus
``ranged``: one graph compiled for two ``mark_dynamic`` ranges, i.e. two guard variants
of one FX key) and prints one line ``CAS-WORKLOAD {json}`` with, per case, the
first-call time, torch's cache counters and the ``.so`` files the cache dir gained.
Options make the same process load a Mega-Cache file or hydrate from a store first, and
capture into a store or save its Mega-Cache artifacts afterwards.

    python tests/torch/workload.py mlp:infer transformer:train [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

#: (batch, min, max) of the two compiles of the ``ranged`` case.
RANGES = ((8, 2, 16), (64, 32, 128))


def so_files(cache_dir: str) -> set[str]:
    root = Path(cache_dir)
    return {str(p.relative_to(root)) for p in root.rglob("*.so")} if root.is_dir() else set()


def ranged() -> float:
    """Compile one function for two batch ranges: same FX/AOT keys, different guards."""
    import torch

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ x.T).sum(1)

    start = time.perf_counter()
    for batch, lo, hi in RANGES:
        x = torch.randn(batch, 32)
        torch._dynamo.mark_dynamic(x, 0, min=lo, max=hi)
        torch.compile(f)(x)
        torch._dynamo.reset()
    return time.perf_counter() - start


def run_case(case: str, args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    import torch
    from torch._dynamo.utils import counters

    from cas.torch.demo import cache_counters, first_call

    model, _, mode = case.partition(":")
    counters.clear()
    torch._dynamo.reset()
    before = so_files(cache_dir)
    if model == "ranged":
        seconds = ranged()
    else:
        seconds = first_call(model, train=mode == "train", small=args.small,
                             dynamic=args.dynamic, backend=args.backend)
    return {"first_call_s": seconds, "counters": cache_counters(),
            "new_so": sorted(so_files(cache_dir) - before)}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="+", help="MODEL:MODE, e.g. mlp:infer transformer:train ranged:infer")
    p.add_argument("--small", action="store_true")
    p.add_argument("--dynamic", action="store_true")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--load-megacache", help="load_cache_artifacts(FILE) before compiling")
    p.add_argument("--save-megacache", help="write save_cache_artifacts() to FILE after")
    p.add_argument("--hydrate", nargs=2, metavar=("STORE", "REF"), help="hydrate before compiling")
    p.add_argument("--capture", metavar="STORE", help="capture into STORE after compiling")
    p.add_argument("--branch", default="main")
    return p.parse_args()


def main() -> None:
    args = parse()
    import torch
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from cas.store import Store

    out: dict[str, Any] = {"cache_dir": cache_dir(), "cases": {}}
    t0 = time.perf_counter()
    if args.load_megacache:
        torch.compiler.load_cache_artifacts(Path(args.load_megacache).read_bytes())
    if args.hydrate:
        from cas.torch import hydrate

        # As a process about to compile would: headers are written while torch traces.
        with Store(args.hydrate[0]) as store:
            hydrated = hydrate(store, args.hydrate[1], cache_dir(), background=True)
    out["prepare_s"] = time.perf_counter() - t0
    for case in args.cases:
        out["cases"][case] = run_case(case, args, cache_dir())
    if args.hydrate:
        out["hydrate"] = hydrated.wait().to_dict()
    if args.save_megacache:
        saved = torch.compiler.save_cache_artifacts()
        Path(args.save_megacache).write_bytes(saved[0] if saved else b"")
    if args.capture:
        from cas.torch import capture

        seconds = sum(c["first_call_s"] for c in out["cases"].values())
        with Store(args.capture) as store:
            res = capture(store, cache_dir(), branch=args.branch,
                          message=" ".join(args.cases), compile_seconds=seconds)
        out["capture"] = res.to_dict()
    out["total_s"] = time.perf_counter() - t0
    print("CAS-WORKLOAD " + json.dumps(out), flush=True)
    os._exit(0)  # skip torch's slow interpreter teardown; everything is written


if __name__ == "__main__":
    main()
