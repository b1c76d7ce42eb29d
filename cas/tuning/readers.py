"""Readers of the files torch keeps autotune results in, as :class:`~cas.tuning.record.Record`.

Torch keeps them in three shapes, none of which says where or when it was measured (the
provenance is passed in; docs/format.md, "Autotune records", names these sources):

- ``cache/<system hash>``: the ``select_algorithm`` timing cache (``PersistentCache``,
  GEMM templates on CPU and GPU) — ``{"system": …, "cache": {op: {inputs_key:
  {precision: {choice.hash_key(): ms}}}}}``, every candidate's time;
- ``<xx>/<hash>.best_config``: Triton's ``AutotuneCache.save`` — the winner's kwargs,
  ``num_warps``, ``num_stages``, ``configs_hash``, ``found_by_coordesc`` (coordinate
  descent), ``time_taken_ms`` (the whole tuning, not the kernel), ``triton_cache_hash``;
- the remote autotune cache (cas kind ``autotune_remote``): the same dict as JSON.

Nothing here imports torch.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Mapping
from typing import Any

from cas import timings
from cas.tuning.record import BEST_CONFIG_BOOKKEEPING, Record, config_line, gemm_key

__all__ = ["from_best_config", "from_timing_file", "parse_inputs_key"]


def parse_inputs_key(inputs_key: str) -> list[dict[str, Any]]:
    """The tensors in ``select_algorithm``'s inputs key.

    Torch writes ``repr([key_of(node) …])``, each a tuple ``(device, dtype, *sizes,
    *strides, offset)`` (``AlgorithmSelectorCache.key_of``), with ``_<hint>`` appended
    when a hint override is in force. Unreadable keys give ``[]``.
    """
    text = inputs_key
    for _ in range(2):
        try:
            value = ast.literal_eval(text)
            break
        except (ValueError, SyntaxError):
            text = text.rsplit("_", 1)[0]
    else:
        return []
    out = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, tuple) or len(item) < 3 or (len(item) - 3) % 2:
            return []
        ndim = (len(item) - 3) // 2
        out.append({
            "device": item[0], "dtype": item[1], "shape": list(item[2 : 2 + ndim]),
            "stride": list(item[2 + ndim : 2 + 2 * ndim]), "offset": item[-1],
        })
    return out


def from_timing_file(
    content: bytes, path: str, device_class: str, provenance: Mapping[str, Any]
) -> Iterator[Record]:
    """Records from a ``select_algorithm`` timing file (``cache/<system hash>``).

    One record per (op, inputs key, float32 precision); the winner is the candidate with
    the lowest finite time, as torch picks it. A file that is not JSON gives nothing.
    """
    try:
        data = json.loads(content)
    except ValueError:
        return
    system = data.get("system") if isinstance(data, dict) else None
    cache = data.get("cache") if isinstance(data, dict) else None
    for op, by_inputs in (cache or {}).items():
        for inputs_key, by_precision in (by_inputs or {}).items():
            for precision, measured in (by_precision or {}).items():
                times = {str(c): float(t) for c, t in (measured or {}).items()  # inf: failed
                         if timings.problem(t) is None}
                if not times:
                    continue
                winner = min(times, key=lambda c: times[c])
                yield Record(
                    key=gemm_key(op, inputs_key, precision),
                    op=op,
                    inputs=parse_inputs_key(inputs_key),
                    config={"choice": winner, "precision": precision},
                    time_ms=times[winner],
                    candidates=times,
                    method=str(provenance.get("method") or "select_algorithm"),
                    device_class=device_class,
                    provenance=dict(provenance),
                    source={"path": path, "system": system, "op": op,
                            "inputs_key": inputs_key, "precision": precision},
                )


def from_best_config(
    content: bytes,
    path: str,
    device_class: str,
    provenance: Mapping[str, Any],
    *,
    timings: Mapping[str, float] | None = None,
    remote: bool = False,
) -> Record | None:
    """A record from a Triton ``.best_config`` file (or a remote autotune value).

    ``path`` is the file's path relative to the cache dir (``<xx>/<hash>.best_config``,
    path-independent: the hash is of the kernel source and torch), or the remote key.
    ``timings``, when the recording process observed the benchmark, gives each config's
    measured time; otherwise only the winner is known and ``time_ms`` is None.
    """
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if not isinstance(data, dict) or "num_warps" not in data:
        return None
    chosen = {k: v for k, v in data.items() if k not in BEST_CONFIG_BOOKKEEPING}
    coordesc = bool(data.get("found_by_coordesc"))
    cands = {str(k): float(v) for k, v in (timings or {}).items() if _possible(v)}
    winner = config_line(chosen)
    prov = dict(provenance)
    if isinstance(data.get("time_taken_ms"), int):
        prov["tuning_ms"] = data["time_taken_ms"]
    return Record(
        key=("triton-remote/" if remote else "triton/") + path,
        op="triton",
        inputs=[],
        config=chosen,
        time_ms=cands.get(winner, min(cands.values()) if cands else None),
        candidates=cands,
        method="coordinate_descent" if coordesc else str(provenance.get("method") or "triton_autotune"),
        device_class=device_class,
        provenance=prov,
        source={"path": path, "content": data, "remote": remote},
    )


def _possible(value: object) -> bool:
    # A module-level name: from_best_config's ``timings`` argument hides the module there.
    return timings.problem(value) is None
