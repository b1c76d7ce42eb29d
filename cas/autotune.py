"""Autotune records: what torch measured, read from the files it keeps, as manifest entries.

Torch keeps autotune results in three shapes, none of which says where or when it was
measured (docs/format.md, "Autotune records", gives the record schema and these sources):

- ``cache/<system hash>``: the ``select_algorithm`` timing cache (``PersistentCache``,
  GEMM templates on CPU and GPU) — ``{"system": …, "cache": {op: {inputs_key:
  {precision: {choice.hash_key(): ms}}}}}``, every candidate's time;
- ``<xx>/<hash>.best_config``: Triton's ``AutotuneCache.save`` — the winner's kwargs,
  ``num_warps``, ``num_stages``, ``configs_hash``, ``found_by_coordesc`` (coordinate
  descent), ``time_taken_ms`` (the whole tuning, not the kernel), ``triton_cache_hash``;
- the remote autotune cache (cas kind ``autotune_remote``): the same dict as JSON.

Each tuned thing becomes one :class:`Record` stored as an entry of kind
:data:`KIND`, keyed by what was tuned, with the device class as variant, so the merge
rule (:data:`MERGE_RULES`: the faster measurement wins) compares only measurements of the
same kernel on the same class of device. Nothing here imports torch: the provenance is passed in.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from cas import entrykeys, history, manifest, timings
from cas.digest import ObjectId
from cas.errors import BadAutotuneRecord
from cas.objects import Commit, Entry, EntryKey
from cas.refs import load_commit
from cas.store import Store

__all__ = [
    "FASTER",
    "KIND",
    "MERGE_RULES",
    "TIMING_KEYS",
    "config_line",
    "RECORD_FORMAT",
    "Record",
    "check_entry",
    "diff_records",
    "diff_rows",
    "entry_meta",
    "from_best_config",
    "from_timing_file",
    "gemm_key",
    "log_rows",
    "merge_lines",
    "parse_inputs_key",
    "rows_of",
    "short_choice",
    "show_rows",
]

#: Manifest kind of autotune records.
KIND = "autotune_record"
#: Version of the record's JSON layout; a reader refuses a newer one.
RECORD_FORMAT = 1

#: Keys of a ``.best_config`` dict that are bookkeeping, not part of the chosen config.
_BEST_CONFIG_BOOKKEEPING = ("configs_hash", "found_by_coordesc", "time_taken_ms", "triton_cache_hash")
#: Keys of a chosen config left out of its one-line name (the name must equal the one
#: built from a live ``triton.Config``: sorted kwargs, num_warps, num_stages).
_NOT_IN_NAME = (*_BEST_CONFIG_BOOKKEEPING, "extra_options", "num_consumer_groups", "num_buffers_warp_spec")
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


# -- readers of torch's formats ---------------------------------------------------------


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


def gemm_key(op: str, inputs_key: str, precision: str) -> str:
    """The record key of one ``select_algorithm`` lookup: op and a hash of its inputs."""
    digest = hashlib.sha256(f"{inputs_key}\0{precision}".encode()).hexdigest()[:20]
    return f"gemm/{op}/{digest}"


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
    chosen = {k: v for k, v in data.items() if k not in _BEST_CONFIG_BOOKKEEPING}
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


def config_line(config: Mapping[str, Any]) -> str:
    """A Triton config as one line, the same for a ``.best_config`` and a live Config."""
    return ",".join(f"{k}={config[k]}" for k in sorted(config) if k not in _NOT_IN_NAME)


# -- reading records back, diffs, merge messages ------------------------------------------


@dataclass(frozen=True)
class Row:
    """A record as listed: its entry key and entry, plus the record when it was read."""

    key: EntryKey
    entry: Entry
    commit: ObjectId | None = None

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.entry.meta

    def time(self) -> float | None:
        """The measured time, or None when there is none or it is impossible."""
        return _timing(self.entry)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key.key,
            "device_class": self.key.variant,
            "env": str(self.key.env),
            "commit": str(self.commit) if self.commit else None,
            **{k: v for k, v in self.entry.meta.items()},
            # an impossible time is shown as none, as the merge rule counts it
            **({"time_ms": self.time()} if "time_ms" in self.entry.meta else {}),
        }


def rows_of(pairs: Iterable[tuple[EntryKey, Entry]]) -> list[Row]:
    """The autotune-record entries among ``pairs``, ordered by op, shapes, device class."""
    return sorted((Row(k, e) for k, e in pairs if k.kind == KIND), key=_order)


@dataclass(frozen=True)
class Delta:
    """One record compared between two manifests: ``ratio`` is old time / new time."""

    key: EntryKey
    old: Entry | None
    new: Entry | None

    def ratio(self) -> float | None:
        a = Row(self.key, self.old).time() if self.old else None
        b = Row(self.key, self.new).time() if self.new else None
        return a / b if a and b else None

    def verdict(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        r = self.ratio()
        if r is None:
            return "changed"
        return "speedup" if r > 1 else "regression" if r < 1 else "same"

    def to_dict(self) -> dict[str, Any]:
        side = self.new or self.old
        assert side is not None
        return {
            "key": self.key.key, "device_class": self.key.variant, "verdict": self.verdict(),
            "op": side.meta.get("op"), "shapes": side.meta.get("shapes"),
            "old_choice": self.old.meta.get("choice") if self.old else None,
            "new_choice": self.new.meta.get("choice") if self.new else None,
            "old_ms": _timing(self.old),
            "new_ms": _timing(self.new),
            "ratio": self.ratio(),
        }


def diff_records(changes: Iterable[tuple[EntryKey, Entry | None, Entry | None]]) -> list[Delta]:
    """The autotune-record changes among manifest changes (``manifest.diff`` output)."""
    return [Delta(k, a, b) for k, a, b in changes if k.kind == KIND]


def short_choice(text: object) -> str:
    """A choice as a reader wants it: a GEMM choice ``<name>-<kwargs>-<code hash>`` by its
    name, a Triton config line whole."""
    value = str(text or "")
    head = value.split("-", 1)[0]
    return value if "=" in head else head


#: Metadata keys holding a measured time in milliseconds, in order of preference.
TIMING_KEYS = timings.TIMING_KEYS


def _possible(value: object) -> bool:
    return timings.problem(value) is None


def _timing(entry: Entry | None) -> float | None:
    # An impossible time (cas.timings: -1, 0, 1e-300; a store may hold one written by
    # other means) counts as no time at all, so it never wins a merge.
    if entry is None:
        return None
    for name in TIMING_KEYS:
        value = entry.meta.get(name)
        if _possible(value):
            return float(value)  # type: ignore[arg-type]
    return None


def _measured_at(entry: Entry) -> float:
    value = entry.meta.get("measured_at")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else float("inf")  # type: ignore[arg-type]


def _faster(key: EntryKey, ours: Entry | None, theirs: Entry | None) -> manifest.Resolution:
    # The side with the lower measured time wins; a side with a time beats one without
    # (a removal has none); equal times go to the earlier measurement (``measured_at``),
    # and otherwise to ours, so the rule is total and both merge orders agree.
    mine, other = _timing(ours), _timing(theirs)
    if other is not None and (mine is None or other < mine):
        return theirs
    if other is not None and other == mine and theirs is not None and ours is not None:
        if _measured_at(theirs) < _measured_at(ours):
            return theirs
    return manifest.OURS(key, ours, theirs)


FASTER = manifest.Rule("faster", _faster)

#: The merge rules of the kinds this module defines (cas.sync.merge.RULES adds them to the
#: manifest's fallback). Only autotune records (one per tuned kernel and device class)
#: carry a measured time; the raw files torch keeps (``autotune``/``autotune_remote``/
#: ``gemm_timing``) keep ours, and hydrate writes the records' choices over them.
MERGE_RULES: Mapping[str, manifest.Resolver] = MappingProxyType({KIND: FASTER})


def merge_lines(
    resolved: Iterable[tuple[EntryKey, Entry | None, str]],
    ours: Mapping[EntryKey, Entry | None],
    theirs: Mapping[EntryKey, Entry | None],
) -> list[str]:
    """One line per autotune record a merge rule decided, for the merge commit message:
    which side's measurement was kept, both times, and the choice.

    ``resolved`` is ``MergeResult.resolved``; ``ours``/``theirs`` map those keys to each side.
    """
    out = []
    for key, chosen, _rule in resolved:
        if key.kind != KIND or chosen is None:
            continue
        mine, other = ours.get(key), theirs.get(key)
        took, lost = ("theirs", mine) if chosen != mine else ("ours", other)
        won_ms, lost_ms = Row(key, chosen).time(), Row(key, lost).time() if lost is not None else None
        other_side = "ours" if took == "theirs" else "theirs"
        vs = f" vs {other_side} {lost_ms:.4g} ms" if lost_ms is not None else ""
        won = f"{won_ms:.4g} ms" if won_ms is not None else "untimed"
        out.append(f"{chosen.meta.get('op')} [{chosen.meta.get('shapes')}] on {key.variant}: kept {took}, "
                   f"{won}{vs} ({short_choice(chosen.meta.get('choice'))})")
    return out


# -- records in a store: log, show, diff ------------------------------------------------------


def _changed_records(store: Store, oid: ObjectId, commit: Commit) -> Iterator[Row]:
    parent = load_commit(store, commit.parents[0]).manifest if commit.parents else manifest.EMPTY
    for key, _old, new in manifest.diff(store, parent, commit.manifest):
        if key.kind == KIND and new is not None:
            yield Row(key, new, oid)


def log_rows(store: Store, start: ObjectId, limit: int | None = None) -> list[Row]:
    """Records measured by the autotune commits reachable from ``start``, newest first.

    Only commits made by recording (``metadata.producer == "autotune"``) count: a merge
    that took a record from the other side did not measure it. ``limit`` counts commits.
    """
    rows: list[Row] = []
    seen = 0
    for oid, commit in history.log(store, start):
        if commit.metadata.get("producer") != "autotune":
            continue
        rows.extend(sorted(_changed_records(store, oid, commit), key=_order))
        seen += 1
        if limit is not None and seen >= limit:
            break
    return rows


def show_rows(store: Store, start: ObjectId) -> list[Row]:
    """Every record in the manifest of commit ``start``, with the commit that measured it
    (None when no autotune commit in its history holds that very record)."""
    current = rows_of(manifest.entries(store, load_commit(store, start).manifest))
    want = {r.entry.blob for r in current}
    found: dict[ObjectId, ObjectId] = {}
    for oid, commit in history.log(store, start):
        if len(found) == len(want):
            break
        if commit.metadata.get("producer") == "autotune":
            for row in _changed_records(store, oid, commit):
                if row.entry.blob in want:
                    found.setdefault(row.entry.blob, oid)
    return [Row(r.key, r.entry, found.get(r.entry.blob)) for r in current]


def diff_rows(store: Store, a: ObjectId, b: ObjectId) -> list[Delta]:
    """How the records of commit ``b`` differ from those of commit ``a``."""
    ra, rb = load_commit(store, a).manifest, load_commit(store, b).manifest
    deltas = diff_records(manifest.diff(store, ra, rb))
    deltas.sort(key=lambda d: _order(Row(d.key, d.new or d.old)))  # type: ignore[arg-type]
    return deltas


def _order(row: Row) -> tuple[str, str, str, str]:
    return (str(row.meta.get("op", "")), str(row.meta.get("shapes", "")), row.key.variant, row.key.key)
