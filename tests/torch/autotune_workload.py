"""A CPU max-autotune compile (freezing on) in a fresh process, for the autotune tests.

    python tests/torch/autotune_workload.py STORE [--record BRANCH] [--hydrate REF] [--device cuda]

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
import time
import warnings
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

#: (in, out) of the layers and the batch, per device. Three distinct GEMM shapes.
LAYERS = {"cpu": ((64, 96), (96, 48), (48, 80)), "cuda": ((1024, 4096), (4096, 1024), (1024, 768))}
BATCH = {"cpu": 16, "cuda": 512}


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--record", default=None)
    parser.add_argument("--hydrate", default=None)
    parser.add_argument("--device", default="cpu", choices=sorted(LAYERS))
    args = parser.parse_args()

    import torch
    import torch._inductor.config as inductor_config

    from cas.store import Store
    from cas.torch import autotune
    from cas.torch.hydrate import hydrate

    out: dict[str, Any] = {}
    with Store(args.store) as store:
        if args.hydrate:
            res = hydrate(store, args.hydrate)
            out["hydrated"] = res.by_kind
        inductor_config.freezing = args.device == "cpu"
        picked, _ = picked_choices()
        model, x = build(args.device)
        start = time.perf_counter()
        with torch.no_grad(), autotune.observe() as seen, autotune.count_benchmarks() as counts:
            torch.compile(model, mode="max-autotune")(x)
            if args.device == "cuda":
                torch.cuda.synchronize()
        out["seconds"] = round(time.perf_counter() - start, 3)
        out["benchmarks"] = counts
        out["picked"] = picked
        if args.record:
            out["recorded"] = autotune.record(store, branch=args.record, observed=seen).to_dict()
    print("CAS-AUTOTUNE " + json.dumps(out))


if __name__ == "__main__":
    main()
