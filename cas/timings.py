"""Measured times: what a time that an autotune record claims may be, wherever it is read.

The merge rule keeps the faster of two measurements of one kernel on one class of device
(:data:`cas.tuning.FASTER`), so a time is a claim that decides what every machine
runs: a peer's ``-1``, ``0`` or ``1e-300`` ms would win every merge. A time is a
possible measurement only if it is a finite number of milliseconds of at least
:data:`MIN_MS`. It is checked where records are made (``cas.torch.autotune.record``),
where manifest nodes are received (``cas.validate``, so fetch, pull and ``cas serve``
refuse them), and where entries are compared or read (the merge rule, hydrate), since a
store may hold one written by other means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["MIN_MS", "TIMED_KINDS", "TIMING_KEYS", "entry_problem", "problem"]

#: The fastest time a measurement may claim, in ms: 1 ns. A kernel launch alone costs
#: microseconds and torch's benchmarks report far above this, so only a forged or broken
#: record claims less; not an option, as no real measurement is near it.
MIN_MS = 1e-6
#: Entry kinds whose metadata carries measured times: ``cas.tuning.KIND`` (named here,
#: not imported: cas.tuning sits above cas.validate, which checks received entries).
TIMED_KINDS = frozenset({"autotune_record"})
#: Metadata keys holding a measured time in milliseconds, in order of preference.
TIMING_KEYS = ("time_ms", "timing_ms")


def problem(value: object) -> str | None:
    """Why ``value`` is not a possible measured time in ms, or None if it is one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"time {str(value)[:40]!r} is not a number"
    if not math.isfinite(value) or value < MIN_MS:
        return f"time {value!r} ms is impossible (a time is finite and at least {MIN_MS} ms)"
    return None


def entry_problem(kind: str, meta: Mapping[str, object]) -> str | None:
    """Why the metadata of an entry of ``kind`` claims an impossible time, or None."""
    if kind not in TIMED_KINDS:
        return None
    for name in TIMING_KEYS:
        why = problem(meta[name]) if name in meta else None
        if why is not None:
            return f"{name}: {why}"
    return None
