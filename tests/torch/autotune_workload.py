"""A CPU max-autotune compile (freezing on) in a fresh process, for the autotune tests.

    python tests/torch/autotune_workload.py STORE [--record BRANCH] [--hydrate REF] [--device cuda]
    python tests/torch/autotune_workload.py STORE --record BRANCH --ranks 2   # distributed

A model of three Linear layers of different sizes (three GEMM shapes) is compiled with
``mode="max-autotune"``. On CPU ``freezing=True`` too, so ``select_algorithm`` benchmarks
the C++ GEMM template against ``_mkl_linear`` for each shape. On CUDA (bench/gpu_check.py)
the layers are larger, in bf16, with a LayerNorm and GELU, so Triton GEMM templates,
pointwise/reduction kernels (``.best_config``) and coordinate descent are all tuned. ``--hydrate`` writes a ref into
the (empty) cache dir first; ``--record`` commits the autotune records afterwards. Prints
``CAS-AUTOTUNE {json}``: benchmarks run (torch's counters), the choice torch picked per
(op, inputs key), and what was hydrated and recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

#: (in, out) of the layers and the batch, per device. Three distinct GEMM shapes.
LAYERS = {"cpu": ((64, 96), (96, 48), (48, 80)), "cuda": ((1024, 4096), (4096, 1024), (1024, 768))}
BATCH = {"cpu": 16, "cuda": 512}
MARKER = "CAS-AUTOTUNE "


def build(device: str) -> tuple[Any, Any]:
    """The model and its input on ``device``."""
    import torch

    torch.manual_seed(0)
    layers = LAYERS[device]
    mods: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(layers):
        mods.append(torch.nn.Linear(n_in, n_out))
        if i < len(layers) - 1:
            mods += [torch.nn.LayerNorm(n_out), torch.nn.GELU()] if device == "cuda" else [torch.nn.ReLU()]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = torch.nn.Sequential(*mods).eval().to(device=device, dtype=dtype)
    return model, torch.randn(BATCH[device], layers[0][0], device=device, dtype=dtype)


def picked_choices() -> tuple[dict[str, str], Any]:
    """Wrap torch's timing lookup: the choice it picks (lowest time) per op and inputs."""
    from torch._inductor.select_algorithm import AlgorithmSelectorCache

    picked: dict[str, str] = {}
    orig = AlgorithmSelectorCache.lookup

    def lookup(self: Any, choices: Any, op: str, inputs: str, *args: Any, **kwargs: Any) -> Any:
        timings = orig(self, choices, op, inputs, *args, **kwargs)
        if timings:
            picked[f"{op} {inputs}"] = min(timings, key=timings.__getitem__).hash_key()
        return timings

    AlgorithmSelectorCache.lookup = lookup  # type: ignore[method-assign]
    return picked, orig


def time_benchmarks() -> list[float]:
    """Wrap ``select_algorithm``'s benchmark step: seconds spent in it, per call."""
    from torch._inductor.select_algorithm import AlgorithmSelectorCache

    spent: list[float] = []
    orig = AlgorithmSelectorCache.benchmark

    def benchmark(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return orig(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    AlgorithmSelectorCache.benchmark = benchmark  # type: ignore[method-assign]
    return spent


def compile_once(device: str) -> tuple[dict[str, Any], Any, dict[str, str]]:
    """Compile the model and run it once: (figures, what observe() saw, choices picked)."""
    import torch
    import torch._inductor.config as inductor_config

    from cas.torch import autotune

    inductor_config.freezing = device == "cpu"
    picked, _ = picked_choices()
    spent = time_benchmarks()
    model, x = build(device)
    start = time.perf_counter()
    with torch.no_grad(), autotune.observe() as seen, autotune.count_benchmarks() as counts:
        torch.compile(model, mode="max-autotune")(x)
        if device == "cuda":
            torch.cuda.synchronize()
    figures = {"seconds": round(time.perf_counter() - start, 3), "benchmarks": counts, "picked": picked,
               "benchmark_seconds": round(sum(spent), 3)}
    return figures, seen, picked


def one_rank(args: argparse.Namespace) -> dict[str, Any]:
    """Rank ``args.rank`` of a distributed autotune: tune a shard, rank 0 commits the union."""
    import torch.distributed as dist

    from cas.store import Store
    from cas.torch import autotune
    from cas.torch.capture import torch_cache_dir

    # Ranks on one machine must not share a timing file (torch rewrites it whole).
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], f"rank{args.rank}")
    dist.init_process_group("gloo", init_method=f"file://{args.rendezvous}", rank=args.rank,
                            world_size=args.world)
    with autotune.shard(args.rank, args.world) as part:
        out, seen, _ = compile_once(args.device)
    out.update(rank=args.rank, tuned=len(part.tuned), skipped=len(part.skipped))
    union = autotune.gather_records(autotune.read_records(torch_cache_dir(), observed=seen,
                                                          method="distributed_select_algorithm"))
    if union is not None:
        with Store(args.store) as store:
            out["recorded"] = autotune.record(store, branch=args.record, records=union).to_dict()
    dist.barrier()  # no rank tears gloo down while another is still in the job
    dist.destroy_process_group()
    return out


def launch(args: argparse.Namespace) -> dict[str, Any]:
    """Start ``args.ranks`` processes of this script as one gloo job; their lines, and wall time."""
    # Rendezvous through a file, not a TCP port picked here: a port could be taken by
    # another process before rank 0 binds it.
    with tempfile.TemporaryDirectory(prefix="cas-gloo-") as tmp:
        rendezvous = os.path.join(tmp, "rendezvous")
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, args.store, "--record", args.record or "main",
                                   "--device", args.device, "--rank", str(r), "--world", str(args.ranks),
                                   "--rendezvous", rendezvous], stdout=subprocess.PIPE, text=True)
                 for r in range(args.ranks)]
        ranks = []
        for p in procs:
            stdout, _ = p.communicate(timeout=900)
            lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
            if p.returncode or not lines:
                raise SystemExit(f"rank failed ({p.returncode}):\n{stdout[-3000:]}")
            ranks.append(json.loads(lines[-1][len(MARKER):]))
    return {"wall_seconds": round(time.perf_counter() - start, 3), "ranks": ranks}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--record", default=None)
    parser.add_argument("--hydrate", default=None)
    parser.add_argument("--device", default="cpu", choices=sorted(LAYERS))
    parser.add_argument("--ranks", type=int, default=0, help="Run a distributed autotune of N ranks.")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--rendezvous", default=None, help="the gloo job's rendezvous file (--ranks makes one)")
    args = parser.parse_args()
    if args.ranks:
        print(MARKER + json.dumps(launch(args)))
        return
    if args.rank is not None:
        print(MARKER + json.dumps(one_rank(args)), flush=True)
        # A finished rank ends here, its result printed: once, on a fresh clone, a rank
        # aborted in gloo's thread teardown at interpreter exit ("terminate called without
        # an active exception", SIGABRT) after printing, which failed a job that was done.
        os._exit(0)

    from cas.store import Store
    from cas.torch import autotune
    from cas.torch.hydrate import hydrate

    out: dict[str, Any] = {}
    with Store(args.store) as store:
        if args.hydrate:
            out["hydrated"] = hydrate(store, args.hydrate).by_kind
        figures, seen, _ = compile_once(args.device)
        out.update(figures)
        if args.record:
            out["recorded"] = autotune.record(store, branch=args.record, observed=seen).to_dict()
    print(MARKER + json.dumps(out))


if __name__ == "__main__":
    main()
