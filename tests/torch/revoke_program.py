"""Two functions, two FX graphs, in one fresh process (tests/torch/test_revoke.py).

    python revoke_program.py cold STORE        compile f and g, capture into STORE
    python revoke_program.py warm STORE REF    hydrate REF from STORE, then compile f and g

Prints one line ``CAS-REVOKE {json}``: per function the FX keys its compile added to the
cache dir and torch's inductor counters; ``hydrate`` (warm) is the hydrate report.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


def fx_keys(cache_dir: str) -> set[str]:
    return {p.name for p in (Path(cache_dir) / "fxgraph").glob("*/*") if p.is_dir()}


def main() -> None:
    mode, store_path = sys.argv[1], sys.argv[2]
    import torch
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from cas.store import Store
    from cas.torch._compat import dynamo_counters
    from cas.torch.capture import capture
    from cas.torch.hydrate import hydrate

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ x.T).sum(1)

    def g(x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(x) * 3).cumsum(0)

    out: dict[str, Any] = {}
    if mode == "warm":
        with Store(store_path) as store:
            out["hydrate"] = hydrate(store, sys.argv[3], cache_dir()).to_dict()
    for name, fn in (("f", f), ("g", g)):
        before = fx_keys(cache_dir())
        dynamo_counters().clear()
        torch._dynamo.reset()
        torch.compile(fn)(torch.randn(8, 8))
        out[name] = {"keys": sorted(fx_keys(cache_dir()) - before),
                     "inductor": dict(dynamo_counters()["inductor"])}
    if mode == "cold":
        with Store(store_path) as store:
            out["capture"] = capture(store, cache_dir(), branch="main", message="f and g").to_dict()
    print("CAS-REVOKE " + json.dumps(out), flush=True)
    os._exit(0)  # skip torch's slow interpreter teardown; everything is written


if __name__ == "__main__":
    main()
