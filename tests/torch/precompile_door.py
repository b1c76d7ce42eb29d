"""Compile the model of ``pmodel.py`` through one of cas's front doors with caching
precompile on, call it once, print ``PRE {json}``. Arguments: the door and the store.

* ``enable``: ``cas.torch.enable(store, record="main", precompile=True)``;
* ``backend``: ``torch.compile(model, backend="cas")`` in a process that set
  ``TORCH_CACHING_PRECOMPILE=1`` (the store from ``CAS_DIR``);
* ``plain``: plain torch with ``TORCH_CACHING_PRECOMPILE=1``, then
  ``save_cache_artifacts()`` writes the units into the cache dir, for ``cas capture``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pmodel import Net  # noqa: E402  (beside this file, wherever a test copied it)

door, store = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = Net().eval()
if door == "enable":
    import cas.torch

    cas.torch.enable(store, record="main", precompile=True)
    compiled = torch.compile(model)
elif door == "backend":
    compiled = torch.compile(model, backend="cas")
else:
    compiled = torch.compile(model)
x = torch.randn(4, 16)
with torch.no_grad():
    equal = torch.allclose(compiled(x), model(x), atol=1e-5)
if door == "plain":
    torch.compiler.save_cache_artifacts()
print("PRE " + json.dumps({"equal": equal}))
