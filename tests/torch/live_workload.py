"""A torch.compile program for the live-backend tests, run in a fresh process.

Optionally enables cas (``--store``), compiles the models named by ``--models``
(``mlp``, ``mlp-wide``: the small MLP of workload.py, and one with another hidden size,
so it is a different graph), runs each once (inference, training or both), checks the
outputs against eager, and prints one ``CAS-LIVE {json}`` line. It exits normally
(``--exit N``), so atexit handlers (cas's flush) run.

    python tests/torch/live_workload.py --store S --record main --models mlp --mode both

With ``--scenarios FILE`` it does several such runs in turn in this one process, each
independent of the others (see ``scenarios``), and prints their JSON by name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

SEGMENT = "CAS-SCENARIO "


def build(name: str) -> tuple[Any, Any]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    hid = {"mlp": 48, "mlp-wide": 80}[name]
    net = nn.Sequential(nn.Linear(32, hid), nn.ReLU(), nn.Linear(hid, 10))
    return net, torch.randn(8, 32)


def run(name: str, mode: str, backend: str, dynamic: bool) -> dict[str, Any]:
    import torch

    net, x = build(name)
    compiled = torch.compile(net, backend=backend, dynamic=True if dynamic else None)
    start = time.perf_counter()
    if mode == "infer":
        with torch.no_grad():
            got, want = compiled(x), net(x)
        err = float((got - want).abs().max())
    else:
        out = compiled(x)
        out.sum().backward()
        grads = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        net(x).sum().backward()
        err = max(float((g - p.grad).abs().max()) for g, p in zip(grads, net.parameters(), strict=True))
    return {"model": name, "mode": mode, "seconds": time.perf_counter() - start, "max_err": err}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--store")
    p.add_argument("--ref", default="main")
    p.add_argument("--record")
    p.add_argument("--no-hydrate", action="store_true")
    p.add_argument("--flush", action="store_true", help="call Session.flush() explicitly")
    p.add_argument("--models", default="mlp")
    p.add_argument("--mode", default="infer", choices=["infer", "train", "both"])
    p.add_argument("--backend", default="inductor")
    p.add_argument("--dynamic", action="store_true")
    p.add_argument("--exit", type=int, default=0)
    p.add_argument("--scenarios", help="a JSON file: [{name, cache_dir, env, args}], run in turn")
    return p


def one(args: argparse.Namespace) -> dict[str, Any]:
    """Enable cas if asked, compile and run the models, and say what happened."""
    import torch
    from torch._dynamo.utils import counters

    out: dict[str, Any] = {}
    session = None
    if args.store:
        import cas.torch

        session = cas.torch.enable(
            args.store, ref=args.ref, record=args.record, hydrate=not args.no_hydrate
        )
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    before = {str(p) for p in Path(cache_dir()).rglob("*.so")}
    out["runs"] = [
        run(m, mode, args.backend, args.dynamic) for m in args.models.split(",") for mode in modes
    ]
    out["cas_imported"] = "cas" in sys.modules
    if session is None and out["cas_imported"]:
        from cas.torch.enable import active_session

        session = active_session()
    if session is not None and args.flush:
        out["flushed"] = str(session.flush())
    out["new_so"] = len({str(p) for p in Path(cache_dir()).rglob("*.so")} - before)
    out["counters"] = {k: dict(counters[k]) for k in ("inductor", "aot_autograd")}
    out["session"] = session.stats() if session is not None else None
    out["torch"] = torch.__version__
    return out


def scenarios(path: str) -> dict[str, Any]:
    """Several independent runs in this one process, each as a fresh process would see
    it: its own cache dir (torch's in-memory caches cleared, as ``fresh_cache`` does),
    dynamo reset, counters zeroed, no session of an earlier run left active, cas's
    one-warning-per-topic memory cleared. Each run's stderr starts with a ``SCENARIO``
    line; its warnings are shown even if an earlier run showed the same text."""
    import traceback

    import torch
    from torch._dynamo.utils import counters
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    results: dict[str, Any] = {}
    for spec in json.loads(Path(path).read_text()):
        print(SEGMENT + spec["name"], file=sys.stderr, flush=True)
        saved_env = dict(os.environ)
        os.environ.update(spec.get("env", {}))
        warnings.filterwarnings("default", message="cas:")  # resets "shown once" memory
        if "cas" in sys.modules:
            from cas.torch import warn

            warn.forget()
        torch._dynamo.reset()
        counters.clear()
        try:
            with temporary_cache_dir(spec["cache_dir"]):
                results[spec["name"]] = one(parser().parse_args(spec["args"]))
        except Exception:
            results[spec["name"]] = {"error": traceback.format_exc()}
        if "cas" in sys.modules:
            from cas.torch.enable import active_session

            session = active_session()
            if session is not None:
                session.close()
        os.environ.clear()
        os.environ.update(saved_env)
        sys.stderr.flush()
    return results


def main() -> None:
    args = parser().parse_args()
    out = {"scenarios": scenarios(args.scenarios)} if args.scenarios else one(args)
    print("CAS-LIVE " + json.dumps(out, default=str), flush=True)
    sys.exit(args.exit)


if __name__ == "__main__":
    main()
