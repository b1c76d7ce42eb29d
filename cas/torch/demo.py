"""The models of the demo (and the tests and benchmark), and the demo's program.

``python -m cas.torch.demo [--model mlp] [--small]`` compiles the model, calls it once
and prints one JSON line prefixed ``CAS-DEMO``: first-call time and torch's cache
counters. ``cas demo`` runs it under ``cas run`` on two "machines" (see the command).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

__all__ = ["build", "cache_counters", "first_call"]


def build(model: str, small: bool = False) -> tuple[Any, Any]:
    """The named model (``mlp`` or ``transformer``) and one input batch.

    Full sizes are the issue's: MLP 512→1024→1024→10 at batch 64, and
    ``TransformerEncoderLayer(256, 8, 1024)`` on (8, 128, 256); ``small`` shrinks both.
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    if model == "mlp":
        d_in, hid, batch = (64, 128, 16) if small else (512, 1024, 64)
        mlp = nn.Sequential(
            nn.Linear(d_in, hid), nn.ReLU(), nn.Linear(hid, hid), nn.ReLU(), nn.Linear(hid, 10)
        )
        return mlp, torch.randn(batch, d_in)
    if model == "transformer":
        # With the MHA fast path the layer runs as one fused aten op: nothing to compile.
        torch.backends.mha.set_fastpath_enabled(False)
        d, heads, ff, shape = (32, 4, 64, (2, 16, 32)) if small else (256, 8, 1024, (8, 128, 256))
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=heads, dim_feedforward=ff, batch_first=True, dropout=0.0
        )
        return layer, torch.randn(*shape)
    raise ValueError(f"unknown model {model!r}")


def _step(compiled: Any, x: Any, train: bool) -> None:
    import torch

    if train:
        compiled(x).sum().backward()
    else:
        with torch.no_grad():
            compiled(x)


def first_call(
    model: str,
    *,
    train: bool = False,
    small: bool = False,
    dynamic: bool = False,
    backend: str = "inductor",
    extra_batches: tuple[int, ...] = (),
) -> float:
    """Compile ``model`` and make its first call (forward, or forward and backward);
    returns the seconds that took. ``extra_batches`` then runs more batch sizes (e.g. to
    make a dynamic graph take another guard variant), untimed.
    """
    import torch

    net, x = build(model, small)
    if not train:
        net.eval()
    # Timed from torch.compile: a precompiled unit is loaded there, not at the call.
    start = time.perf_counter()
    compiled = torch.compile(net, dynamic=True if dynamic else None, backend=backend)
    _step(compiled, x, train)
    elapsed = time.perf_counter() - start
    for batch in extra_batches:
        _step(compiled, torch.randn(batch, *x.shape[1:]), train)
    return elapsed


def cache_counters() -> dict[str, dict[str, int]]:
    """Torch's inductor and aot_autograd counters (cache hits, misses, saves)."""
    from cas.torch._compat import dynamo_counters

    return {k: dict(v) for k, v in dynamo_counters().items() if k in ("inductor", "aot_autograd")}


def main() -> None:
    """The demo's program: compile the model, call it once, print one ``CAS-DEMO`` line.

    It knows nothing of cas: ``cas demo`` runs it under ``cas run``, as a user would.
    """
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    p = argparse.ArgumentParser(prog="python -m cas.torch.demo")
    p.add_argument("--model", default="mlp", choices=["mlp", "transformer"])
    p.add_argument("--small", action="store_true")
    args = p.parse_args()
    seconds = first_call(args.model, small=args.small)
    print("CAS-DEMO " + json.dumps({"first_call_s": seconds, "counters": cache_counters()}), flush=True)


if __name__ == "__main__":
    main()
