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
    from cas.torch.enable import active_session

    seconds = first_call("mlp", small=True, backend=args.backend)
    session = active_session()
    print("CAS-DOOR " + json.dumps({"first_call_s": seconds, "counters": cache_counters(),
                                    "prewarm": session.stats()["prewarm"] if session else None,
                                    "isa_checks": _isa_checks(), "x86_isas": _x86_isas()}), flush=True)


def _isa_checks() -> int:
    """How many times torch ran an ISA's probe in this process (its per-ISA cache's misses)."""
    from torch._inductor.cpu_vec_isa import VecISA

    return int(VecISA._VecISA__bool__impl.cache_info().misses)  # type: ignore[attr-defined]


def _x86_isas() -> list[str]:
    """The vector ISAs torch reads from this x86 CPU (empty elsewhere)."""
    import platform

    from torch._inductor.cpu_vec_isa import x86_isa_checker

    return list(x86_isa_checker()) if platform.machine() in ("x86_64", "AMD64") else []


if __name__ == "__main__":
    main()
