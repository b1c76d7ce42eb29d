"""A program that knows nothing of cas: compile a small model, call it once, print what
dynamo did (``PRE {json}``). Its model lives in ``pmodel.py`` beside it, so a test can
change the model's source; ``PRE_MODEL=decorated`` takes pdecorated.py's instead (a
``forward`` decorated with ``functools.wraps``, its loss through a property getter) and
runs a training step (forward, loss, backward; ``PRE_STEP=infer``: forward only, under
``no_grad``). Argument: the batch size. ``PRE_FAULT`` injects a fault into
torch (tests only): ``install`` makes a loaded unit's guards fail to rebuild (as a
``_Missing`` value does), ``record`` makes recording the unit fail while dynamo traces."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
if os.environ.get("PRE_MODEL") == "decorated":
    from pdecorated import Net  # noqa: E402  (beside this file, wherever a test copied it)
else:
    from pmodel import Net  # type: ignore[assignment]  # noqa: E402


def _inject(fault: str) -> None:
    import torch._dynamo.package as package

    def fail(*args: object, **kwargs: object) -> None:
        raise TypeError(f"injected fault: '_Missing' object in {fault}")

    if fault == "install":
        package.load_guard_manager = fail  # type: ignore[assignment]
    elif fault == "record":
        package._GuardedCodeCacheEntry = fail  # type: ignore[assignment,misc]


_inject(os.environ.get("PRE_FAULT", ""))


def _train_step(f: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """pdecorated's forward (``{"y": (y, loss)}``), the loss's backward: y, the loss, every grad."""
    model.zero_grad(set_to_none=True)
    y, loss = f(x)["y"]
    loss.backward()
    return [y.detach(), loss.detach(), *(p.grad.clone() for p in model.parameters() if p.grad is not None)]


def _step(f: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    if os.environ.get("PRE_MODEL") == "decorated":
        if os.environ.get("PRE_STEP") != "infer":
            return _train_step(f, model, x)
        with torch.no_grad():
            return list(f(x)["y"])
    with torch.no_grad():
        return [f(x)]


torch.manual_seed(0)
model = Net().eval()
compiled = torch.compile(model)
x = torch.randn(int(sys.argv[1]), 16)
got, expected = _step(compiled, model, x), _step(model, model, x)
equal = len(got) == len(expected) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected, strict=True))
from torch._dynamo.utils import counters  # noqa: E402

print("PRE " + json.dumps({"equal": equal, "traced": int(counters["frames"]["total"]),
                           "dynamo_cache": dict(counters["dynamo_cache"]),
                           "fx_hit": int(counters["inductor"]["fxgraph_cache_hit"])}))
