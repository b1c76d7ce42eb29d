"""Autotune records: what torch measured, where, when and how, as manifest entries.

Torch keeps autotune results in files that do not say where or when they were measured
(:mod:`cas.tuning.readers` reads them); each tuned thing becomes one :class:`Record`,
stored as an entry of kind :data:`KIND`, keyed by what was tuned, with the device class
as variant, so the merge rule (:mod:`cas.tuning.merge`: the faster measurement wins)
compares only measurements of the same kernel on the same class of device.
docs/format.md, "Autotune records", gives the record schema. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from cas import entrykeys, timings
from cas.errors import BadAutotuneRecord
from cas.objects import Entry, EntryKey

__all__ = [
    "BEST_CONFIG_BOOKKEEPING",
    "KIND",
    "RECORD_FORMAT",
    "Record",
    "check_entry",
    "config_line",
    "entry_meta",
    "gemm_key",
    "short_choice",
]

#: Manifest kind of autotune records.
KIND = "autotune_record"
#: Version of the record's JSON layout; a reader refuses a newer one.
RECORD_FORMAT = 1

#: Keys of a ``.best_config`` dict that are bookkeeping, not part of the chosen config.
BEST_CONFIG_BOOKKEEPING = ("configs_hash", "found_by_coordesc", "time_taken_ms", "triton_cache_hash")
#: Keys of a chosen config left out of its one-line name (the name must equal the one
#: built from a live ``triton.Config``: sorted kwargs, num_warps, num_stages).
_NOT_IN_NAME = (*BEST_CONFIG_BOOKKEEPING, "extra_options", "num_consumer_groups", "num_buffers_warp_spec")
#: Where torch keeps a ``.best_config`` (``<xx>/<hash>.best_config``, as cas.torch.kinds
#: scans for it): the only files a Triton record writes.
_BEST_CONFIG_PATH = re.compile(r"[a-z0-9_]{2}/[^/]+\.best_config\Z")
#: Type of each field of a record (``time_ms`` and ``source`` are checked on their own).
_FIELD_TYPES: Mapping[str, type | tuple[type, ...]] = MappingProxyType({
    "key": str, "op": str, "inputs": list, "config": dict, "candidates": dict, "method": str,
    "device_class": str, "provenance": dict, "source": dict,
})


@dataclass(frozen=True)
class Record:
    """One tuned thing: what, the choice, the times, and where/when/how it was measured.

    ``key`` names what was tuned independently of the device; ``device_class`` is the
    entry variant. ``time_ms`` is the winner's measured time (None when torch kept only
    the winner, as ``.best_config`` does); ``candidates`` maps each candidate torch timed
    to its time. ``source`` says how to write it back (``path`` relative to torch's cache
    dir, ``content`` what belongs there).
    """

    key: str
    op: str
    inputs: list[dict[str, Any]]
    config: dict[str, Any]
    time_ms: float | None
    candidates: dict[str, float]
    method: str
    device_class: str
    provenance: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    format: int = RECORD_FORMAT

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys): the blob of the entry."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Record:
        """Parse and check a record blob (:meth:`check`); BadAutotuneRecord if it is not
        a well-formed record of the format this version reads."""
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: a hostile nesting
            raise BadAutotuneRecord(f"autotune record is not JSON: {str(exc)[:80]}") from exc
        if not isinstance(raw, dict) or raw.get("format") != RECORD_FORMAT:
            raise BadAutotuneRecord(f"not an autotune record of format {RECORD_FORMAT}")
        names = cls.__dataclass_fields__
        missing = sorted(set(names) - {"source", "format"} - raw.keys())
        if missing:
            raise BadAutotuneRecord(f"autotune record lacks {', '.join(missing)}")
        rec = cls(**{k: v for k, v in raw.items() if k in names})
        rec.check()
        return rec

    def problem(self) -> str | None:
        """Why this record may not be stored or written back, or None: a field of the
        wrong type, an impossible time (cas.timings), or a source naming a file that is
        not its own kind's (:meth:`target`)."""
        for name, kind in _FIELD_TYPES.items():
            if not isinstance(getattr(self, name), kind):
                return f"{name} is not a {getattr(kind, '__name__', 'value')}"
        times = ([] if self.time_ms is None else [self.time_ms]) + list(self.candidates.values())
        impossible = next((w for w in map(timings.problem, times) if w is not None), None)
        if impossible is not None:
            return impossible
        if not all(isinstance(t, dict) for t in self.inputs) or not isinstance(self.provenance.get("rank", 0), int):
            return "inputs or provenance are malformed"
        try:
            self.target()
        except BadAutotuneRecord as exc:
            return exc.message
        return None

    def check(self) -> None:
        """Raise BadAutotuneRecord, naming the record, if :meth:`problem` finds one."""
        why = self.problem()
        if why is not None:
            raise BadAutotuneRecord(f"autotune record {str(self.key)[:80]!r}: {why}")

    def target(self) -> tuple[str, str] | None:
        """The (kind, entry key) of the file hydrate writes this record into, or None for a
        record torch keeps elsewhere (a remote autotune value).

        A Triton record writes its own ``.best_config`` (kind ``autotune``, key = the
        record's key less ``triton/``), a GEMM record its slot of the timing file (kind
        ``gemm_timing``, key = ``source.path`` less ``cache/``, the slot named by its
        key); hydrate places either like every entry of that kind (kind grammar, inside
        the cache dir). Any other ``source`` is BadAutotuneRecord: a record never names
        another kind's file (an FX entry, a kernel), a path outside, or another key's slot.
        """
        src = self.source
        if not isinstance(src, dict):
            raise BadAutotuneRecord("source is not a map")
        if src.get("remote") is True:
            return None
        path = src.get("path")
        if not isinstance(path, str):
            raise BadAutotuneRecord("source has no path")
        if self.op == "triton":
            ok = bool(_BEST_CONFIG_PATH.match(path)) and self.key == f"triton/{path}" and isinstance(
                src.get("content"), dict)
            kind, key = "autotune", path
        else:
            slot = [src.get(n) for n in ("op", "inputs_key", "precision")]
            kind, key = "gemm_timing", path.removeprefix("cache/")
            ok = path.startswith("cache/") and all(isinstance(v, str) for v in slot) and slot[0] == self.op \
                and self.key == gemm_key(*slot)  # type: ignore[arg-type]
        if not ok or entrykeys.problem(kind, key) is not None:
            raise BadAutotuneRecord(f"source path {path[:80]!r} is not this record's own {kind} file")
        return kind, key

    @property
    def choice(self) -> str:
        """The chosen config, one short line (a GEMM choice name, or Triton kwargs)."""
        if "choice" in self.config:
            return str(self.config["choice"])
        return config_line(self.config)

    @property
    def shapes(self) -> str:
        """Input shapes and dtypes, e.g. ``64x512 f32, 512x512 f32``."""
        parts = []
        for t in self.inputs:
            shape = t.get("shape")
            dims = "x".join(str(d) for d in shape) if isinstance(shape, list) else ""
            dtype = str(t.get("dtype", "")).replace("torch.", "").replace("float", "f")
            parts.append(f"{dims} {dtype}".strip())
        return ", ".join(parts)

    def measured_at(self) -> float:
        value = self.provenance.get("time")
        return float(value) if isinstance(value, (int, float)) else 0.0


def check_entry(key: EntryKey, entry: Entry, rec: Record) -> None:
    """Raise BadAutotuneRecord unless ``rec``, read from ``entry``'s blob, is the record
    its entry says: the same key and device class (a merge compares entries by key, so a
    blob of another key would slip past it), and no impossible time in the metadata."""
    why = timings.entry_problem(key.kind, entry.meta)
    if why is None and (rec.key, rec.device_class) != (key.key, key.variant):
        why = f"the blob is the record of {rec.key[:80]!r} on {rec.device_class[:40]!r}"
    if why is not None:
        raise BadAutotuneRecord(why)


def entry_meta(rec: Record) -> dict[str, Any]:
    """The entry metadata the merge rule and ``cas autotune log`` read without the blob."""
    meta: dict[str, Any] = {
        "op": rec.op,
        "shapes": rec.shapes,
        "choice": rec.choice[:200],
        "method": rec.method,
        "measured_at": rec.measured_at(),
        "device": str(rec.provenance.get("device", "")),
        "host": str(rec.provenance.get("host", "")),
        "rank": int(rec.provenance.get("rank", 0) or 0),
        "candidates": len(rec.candidates),
    }
    if rec.time_ms is not None:
        meta["time_ms"] = rec.time_ms
    return meta


def gemm_key(op: str, inputs_key: str, precision: str) -> str:
    """The record key of one ``select_algorithm`` lookup: op and a hash of its inputs."""
    digest = hashlib.sha256(f"{inputs_key}\0{precision}".encode()).hexdigest()[:20]
    return f"gemm/{op}/{digest}"


def config_line(config: Mapping[str, Any]) -> str:
    """A Triton config as one line, the same for a ``.best_config`` and a live Config."""
    return ",".join(f"{k}={config[k]}" for k in sorted(config) if k not in _NOT_IN_NAME)


def short_choice(text: object) -> str:
    """A choice as a reader wants it: a GEMM choice ``<name>-<kwargs>-<code hash>`` by its
    name, a Triton config line whole."""
    value = str(text or "")
    head = value.split("-", 1)[0]
    return value if "=" in head else head
