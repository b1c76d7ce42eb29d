"""A program that knows nothing of cas: compile a small model, call it once, print what
dynamo did (``PRE {json}``). Its model lives in ``pmodel.py`` beside it, so a test can
change the model's source. Argument: the batch size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pmodel import Net  # noqa: E402  (beside this file, wherever a test copied it)

torch.manual_seed(0)
model = Net().eval()
compiled = torch.compile(model)
x = torch.randn(int(sys.argv[1]), 16)
with torch.no_grad():
    equal = torch.allclose(compiled(x), model(x), atol=1e-5)
from torch._dynamo.utils import counters  # noqa: E402

print("PRE " + json.dumps({"equal": equal, "traced": int(counters["frames"]["total"]),
                           "dynamo_cache": dict(counters["dynamo_cache"])}))
