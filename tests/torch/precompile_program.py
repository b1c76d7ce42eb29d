"""A program that knows nothing of cas: compile a small model, call it, print what
dynamo did (``PRE {json}``: totals, and ``calls``: the counts after each call). Its model
lives in ``pmodel.py`` beside it, so a test can change the model's source;
``PRE_MODEL=decorated`` takes pdecorated.py's instead (a ``forward`` decorated with
``functools.wraps``, its loss through a property getter) and runs a training step
(forward, loss, backward; ``PRE_STEP=infer``: forward only, under ``no_grad``;
``PRE_STEP=both``: a training step, then inference). Argument: the batch size, or
batch sizes separated by commas (one call each, in order, with the same model).
``PRE_FAULT`` injects a fault into
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
        step = os.environ.get("PRE_STEP", "train")
        out = _train_step(f, model, x) if step in ("train", "both") else []
        if step in ("infer", "both"):
            with torch.no_grad():
                out += list(f(x)["y"])
        return out
    with torch.no_grad():
        return [f(x)]


def _counts() -> dict[str, object]:
    from torch._dynamo.utils import counters

    return {"traced": int(counters["frames"]["total"]), "dynamo_cache": dict(counters["dynamo_cache"]),
            "fx_hit": int(counters["inductor"]["fxgraph_cache_hit"])}


def _equal(got: list[torch.Tensor], expected: list[torch.Tensor]) -> bool:
    return len(got) == len(expected) and all(torch.allclose(a, b, atol=1e-5)
                                             for a, b in zip(got, expected, strict=True))


torch.manual_seed(0)
model = Net().eval()
compiled = torch.compile(model)
equal, calls = True, []
for batch in sys.argv[1].split(","):
    x = torch.randn(int(batch), 16)
    equal = _equal(_step(compiled, model, x), _step(model, model, x)) and equal
    calls.append(_counts())
print("PRE " + json.dumps({"equal": equal, **calls[-1], "calls": calls}))
