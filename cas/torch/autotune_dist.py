"""Distributed autotune: each rank benchmarks its share of the GEMM lookups of a compile
(:func:`shard`), rank 0 gathers every rank's records (:func:`gather_records`) and commits
the union (:func:`cas.torch.autotune.record`). Both are also named in
:mod:`cas.torch.autotune`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cas import tuning
from cas.torch import _compat

__all__ = ["Shard", "gather_records", "shard"]


@dataclass
class Shard:
    """What :func:`shard` did in this process: GEMM lookups tuned here and left to others."""

    rank: int
    world: int
    tuned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@contextlib.contextmanager
def shard(rank: int, world: int) -> Iterator[Shard]:
    """Benchmark only this rank's share of the GEMM autotuning of a compile.

    Every rank compiles the same graphs, so they meet the same ``select_algorithm``
    lookups in the same order; the i-th distinct (op, inputs) is benchmarked by rank
    ``i % world`` — torch's own ``distributed_autotune`` assignment. Elsewhere the lookup
    runs without a benchmark function: a cached result is used, and a miss returns no
    timings, on which torch falls back to its ATen kernel and writes nothing. The shards'
    records then meet in :func:`gather_records`.

    Torch's ``distributed_max_autotune_gemm`` is not used: in torch 2.11–2.14 it covers
    ``tuned_mm`` only (not addmm, bmm or the CPU ``packed_linear`` of freezing) and
    exchanges the chosen template, not the times a record holds.
    """
    state = Shard(rank, world)
    order: dict[str, int] = {}

    def make(orig: Any) -> Any:
        def lookup(self: Any, choices: Any, op: str, inputs: str, benchmark: Any, *args: Any, **kwargs: Any) -> Any:
            key = f"{op} {inputs}"
            index = order.setdefault(key, len(order))
            mine = index % world == rank
            (state.tuned if mine else state.skipped).append(key)
            return orig(self, choices, op, inputs, benchmark if mine else None, *args, **kwargs)

        return lookup

    with _compat.patched_gemm_lookup(make):
        yield state


def gather_records(records: Iterable[tuning.Record], group: Any = None) -> list[tuning.Record] | None:
    """All ranks' records, on rank 0 (None elsewhere), exchanged over ``group``.

    Sent through :func:`cas.torch._compat.all_gather_bytes`. A record measured by several
    ranks (a key more than one had cached) is kept once, the faster.
    """
    data = json.dumps([r.to_bytes().decode() for r in records]).encode()
    gathered = _compat.all_gather_bytes(data, group)
    if gathered is None:
        return None
    best: dict[tuple[str, str], tuning.Record] = {}
    for sent in gathered:
        for text in json.loads(sent):
            rec = tuning.Record.from_bytes(text.encode())
            old = best.get((rec.key, rec.device_class))
            if old is None or (rec.time_ms is not None and (old.time_ms is None or rec.time_ms < old.time_ms)):
                best[(rec.key, rec.device_class)] = rec
    return list(best.values())
