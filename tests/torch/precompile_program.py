"""A program that knows nothing of cas: compile a small model, call it once, print what
dynamo did (``PRE {json}``). Its model lives in ``pmodel.py`` beside it, so a test can
change the model's source. Argument: the batch size. ``PRE_FAULT`` injects a fault into
torch (tests only): ``install`` makes a loaded unit's guards fail to rebuild (as a
``_Missing`` value does), ``record`` makes recording the unit fail while dynamo traces."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pmodel import Net  # noqa: E402  (beside this file, wherever a test copied it)


def _inject(fault: str) -> None:
    import torch._dynamo.package as package

    def fail(*args: object, **kwargs: object) -> None:
        raise TypeError(f"injected fault: '_Missing' object in {fault}")

    if fault == "install":
        package.load_guard_manager = fail  # type: ignore[assignment]
    elif fault == "record":
        package._GuardedCodeCacheEntry = fail  # type: ignore[assignment,misc]


_inject(os.environ.get("PRE_FAULT", ""))
torch.manual_seed(0)
model = Net().eval()
compiled = torch.compile(model)
x = torch.randn(int(sys.argv[1]), 16)
with torch.no_grad():
    equal = torch.allclose(compiled(x), model(x), atol=1e-5)
from torch._dynamo.utils import counters  # noqa: E402

print("PRE " + json.dumps({"equal": equal, "traced": int(counters["frames"]["total"]),
                           "dynamo_cache": dict(counters["dynamo_cache"]),
                           "fx_hit": int(counters["inductor"]["fxgraph_cache_hit"])}))
