"""A program a user would write: compile a small model, call it, print torch's counters.

Run by test_front_doors.py through each recording front door: plain (under ``cas run``),
``--enable STORE`` (``cas.torch.enable(STORE, record="main")`` first) or ``--backend cas``.
Prints one line ``CAS-DOOR {json}`` and exits normally, so cas's at-exit flush runs.
"""

from __future__ import annotations

import argparse
import json
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--enable", metavar="STORE")
    p.add_argument("--backend", default="inductor")
    args = p.parse_args()
    import torch  # noqa: F401

    if args.enable:
        import cas.torch

        cas.torch.enable(args.enable, record="main")
    from cas.torch.demo import cache_counters, first_call

    seconds = first_call("mlp", small=True, backend=args.backend)
    print("CAS-DOOR " + json.dumps({"first_call_s": seconds, "counters": cache_counters()}), flush=True)


if __name__ == "__main__":
    main()
