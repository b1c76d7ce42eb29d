"""Autotune records from this process and cache dir: read, commit, hydrate, count.

- :func:`read_records` turns the files torch left in a cache dir (the ``select_algorithm``
  timing file, Triton ``.best_config`` files) and remote-autotune values into
  :class:`cas.tuning.Record` s, with this process's provenance.
- :func:`observe` is a context manager for the compiling process: it sees the Triton
  benchmark timings torch does not keep (``.best_config`` holds only the winner) and
  the moment each GEMM was measured.
- :func:`record` commits the records that are new or changed: ``autotune: N kernels on
  <device>``, an own commit.
- :func:`write_records` is hydrate's half: the recorded choices written where torch
  looks them up, over whatever file a capture carried.
- :func:`count_benchmarks` counts the autotune benchmarks torch runs (replay checks).
- :func:`shard` and :func:`gather_records`: distributed autotune — each rank benchmarks
  its share of the GEMM lookups, rank 0 commits the union.

Torch internals touched (2.11–2.14; compared in docs/torch.md), all through
:mod:`cas.torch._compat`: ``CacheBase.get_system`` (timing file name),
``CachingAutotuner.benchmark_all_configs`` / ``coordinate_descent_tuning`` /
``_combo_sequential_autotune`` (2.13+) and ``AutotuneCache.local_cache``,
``counters["inductor"]``, ``AlgorithmSelectorCache.lookup``, ``add_feedback_saver`` with
``create_inputs_key`` and ``get_algorithm_selector_cache().feedback_saver_fns``
(:func:`cas.torch._compat.add_gemm_feedback`), ``torch.cuda`` and ``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas import manifest, tuning
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import BadAutotuneRecord
from cas.history import commit_changes
from cas.objects import Entry, EntryKey
from cas.refs import branch_ref, load_commit
from cas.store import Store
from cas.torch import _compat, blobs, kinds
from cas.torch.autotune_dist import Shard, gather_records, shard
from cas.torch.env import cpu_fingerprint, current_env

__all__ = [
    "Observed",
    "RecordResult",
    "RecordsHere",
    "Shard",
    "count_benchmarks",
    "device_class",
    "gather_records",
    "observe",
    "provenance",
    "read_records",
    "record",
    "shard",
    "watch",
    "write_records",
]


@functools.cache
def device_class() -> str:
    """The class of device results are valid for: ``cpu-<fingerprint>`` or
    ``cuda-<name>-sm<major><minor>`` (the variant of every record measured here). From
    this process's env (torch's own answers, or the per-install cache of them where torch
    is not imported: ``cas capture`` reads a cache dir without importing torch)."""
    env = current_env().fields
    if env.get("device") == "cuda":
        name = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")
        return f"cuda-{name}-sm{env['gpu_capability'].replace('.', '')}"
    return f"cpu-{cpu_fingerprint()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(method: str = "") -> dict[str, Any]:
    """Where, when and how this process measures: the ``provenance`` of its records."""
    env = current_env().fields
    rank, world = _compat.dist_rank()
    prov: dict[str, Any] = {
        "torch": env["torch_version"],
        "triton": env.get("triton", ""),
        "host": platform.node(),
        "time": round(time.time(), 3),
        "rank": rank,
        "world_size": world,
    }
    if method:
        prov["method"] = method
    if env.get("device") == "cuda":
        prov.update(device=env["gpu"], capability=env["gpu_capability"], cuda=env.get("cuda", ""))
    else:
        prov.update(device=_cpu_model(), cpu=cpu_fingerprint(), isa=env.get("cpu_isa", ""),
                    threads=int(env.get("threads", "0") or 0))
    return prov


# -- observing a compile ------------------------------------------------------------------


@dataclass
class Observed:
    """What :func:`observe` saw: Triton timings per ``.best_config`` path (relative to the
    cache dir), and when each GEMM lookup (op, inputs key) was benchmarked."""

    triton: dict[str, dict[str, float]] = field(default_factory=dict)
    gemm_times: dict[tuple[str, str], float] = field(default_factory=dict)
    triton_benchmarks: int = 0  # benchmark_all_configs calls, with or without a cache path


def _line(cfg: Any) -> str:
    return tuning.config_line({**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages})


@contextlib.contextmanager
def observe() -> Iterator[Observed]:
    """Watch torch autotune in this process; yields what it saw (filled as it goes)."""
    seen, stop = watch()
    try:
        yield seen
    finally:
        stop()


def watch(*, lazily: bool = False) -> tuple[Observed, Callable[[], None]]:
    """Start watching torch autotune in this process: what it sees (filled as it goes) and
    the function that stops watching. :func:`observe` as two calls, for a whole session.

    ``lazily``: install nothing until torch itself imports ``select_algorithm`` and
    ``triton_heuristics`` (:func:`cas.torch.hooks.after_import`), so a program that never
    autotunes does not import them for cas.
    """
    seen = Observed()
    undo: list[Callable[[], None]] = []
    stopped = False

    def on_select_algorithm(module: Any) -> None:
        if stopped:
            return

        def on_gemm(name: str, inputs_key: str) -> None:
            seen.gemm_times[(name, inputs_key)] = round(time.time(), 3)

        undo.append(_compat.add_gemm_feedback(module, on_gemm))

    def on_triton(_module: Any) -> None:
        if not stopped:
            undo.append(_patch_triton(seen))

    if lazily:
        _when_ready(_compat.SELECT_ALGORITHM, "add_feedback_saver", on_select_algorithm)
        _when_ready(_compat.TRITON_HEURISTICS, "CachingAutotuner", on_triton)
    else:
        on_select_algorithm(_compat.select_algorithm())
        on_triton(None)

    def stop() -> None:
        nonlocal stopped
        stopped = True
        while undo:
            undo.pop()()

    return seen, stop


def _when_ready(name: str, needs: str, fn: Callable[[Any], None]) -> None:
    """Call ``fn(module)`` once module ``name`` is imported and has ``needs``: now, right
    after its import, or — when it is being imported right now, by the very import that
    led here (torch imports dynamo from inside inductor's modules) — at the start of the
    next compile (dynamo's ``callback_handler``, 2.11–2.14)."""
    from cas.torch.hooks import after_import

    module = sys.modules.get(name)
    if module is None:
        after_import(name, fn)
    elif hasattr(module, needs):
        fn(module)
    else:
        done = False

        def at_compile_start(*_: Any) -> None:
            nonlocal done
            ready = sys.modules.get(name)
            if done or ready is None or not hasattr(ready, needs):
                return
            done = True
            try:
                fn(ready)
            except Exception:  # inside torch's compile: never raise
                pass

        def register(dynamo: Any) -> None:
            _compat.on_compile_start(dynamo, at_compile_start)

        after_import(_compat.DYNAMO, register)


def _patch_triton(seen: Observed) -> Any:
    autotuner = _compat.caching_autotuner()
    if autotuner is None:  # no Triton in this build: nothing to watch
        return lambda: None
    orig = _compat.triton_tuner_methods(autotuner)

    def bench_all(self: Any, *args: Any, **kwargs: Any) -> Any:
        timings = orig["benchmark_all_configs"](self, *args, **kwargs)
        seen.triton_benchmarks += 1
        path = _compat.best_config_path(self)
        if path is not None:
            seen.triton.setdefault(path, {}).update({_line(k.config): float(v) for k, v in timings.items()})
        return timings

    def tuner(name: str) -> Any:
        def tune(self: Any, *args: Any, **kwargs: Any) -> Any:
            out = orig[name](self, *args, **kwargs)
            path = _compat.best_config_path(self)
            results = _compat.coordesc_results(self)
            if path is not None and results:
                lines = {",".join(f"{k}={v}" for k, v in sorted(h)): float(t) for h, t in results.items()}
                seen.triton.setdefault(path, {}).update(lines)
            return out

        return tune

    for name in orig:
        setattr(autotuner, name, bench_all if name == "benchmark_all_configs" else tuner(name))

    def undo() -> None:
        for name, method in orig.items():
            setattr(autotuner, name, method)

    return undo


@contextlib.contextmanager
def count_benchmarks() -> Iterator[dict[str, int]]:
    """Count autotune benchmarks run inside the block, by torch's own counters.

    ``select_algorithm`` (GEMM templates), coordinate descent and (2.13+) combo-kernel
    tuning have counters (a name this torch lacks stays 0); a Triton
    ``benchmark_all_configs`` has none and is counted by wrapping it.
    """
    counters = _compat.dynamo_counters()
    names = ("select_algorithm_autotune", "coordesc_tuning_bench", "combo_autotune_bench")
    before = {n: counters["inductor"][n] for n in names}
    out: dict[str, int] = {n: 0 for n in (*names, "triton_benchmark_all_configs")}
    seen = Observed()
    undo = _patch_triton(seen)
    try:
        yield out
    finally:
        undo()
        for n in names:
            out[n] = counters["inductor"][n] - before[n]
        out["triton_benchmark_all_configs"] = seen.triton_benchmarks


# -- reading and committing ---------------------------------------------------------------


def read_records(
    cache_dir: Path,
    *,
    observed: Observed | None = None,
    remote_values: Iterable[tuple[str, bytes]] = (),
    method: str = "",
    since: float | None = None,
) -> list[tuning.Record]:
    """Every autotune result in ``cache_dir`` (and ``remote_values``) as records of this
    process's device class and provenance; with ``since``, only files written since then."""
    cls, prov = device_class(), provenance(method)
    seen = observed or Observed()
    out: list[tuning.Record] = []
    for found in kinds.scan(Path(cache_dir)):
        if found.kind not in ("gemm_timing", "autotune"):
            continue
        try:
            mtime = found.path.stat().st_mtime
            if since is not None and mtime < since:
                continue
            content = found.path.read_bytes()
        except OSError:
            continue
        rel = str(found.path.relative_to(cache_dir))
        file_prov = {**prov, "time": round(mtime, 3)}
        if found.kind == "gemm_timing":
            for rec in tuning.from_timing_file(content, rel, cls, file_prov):
                at = seen.gemm_times.get((rec.op, str(rec.source.get("inputs_key"))))
                out.append(_with_time(rec, at) if at is not None else rec)
        else:
            best = tuning.from_best_config(content, rel, cls, file_prov, timings=seen.triton.get(rel))
            if best is not None:
                out.append(best)
    for key, value in remote_values:
        best = tuning.from_best_config(value, key, cls, prov, remote=True)
        if best is not None:
            out.append(best)
    return out


def _with_time(rec: tuning.Record, at: float) -> tuning.Record:
    return tuning.Record(**{**rec.__dict__, "provenance": {**rec.provenance, "time": at}})


@dataclass
class RecordResult:
    """What :func:`record` committed: the commit (None: nothing new), counts, device."""

    commit: ObjectId | None
    device: str
    added: int = 0
    changed: int = 0
    unchanged: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"commit": str(self.commit) if self.commit else None, "device": self.device,
                "added": self.added, "changed": self.changed, "unchanged": self.unchanged}


def _same_measurement(old: Entry, rec: tuning.Record) -> bool:
    # Re-reading a cache dir that hydrate filled gives back the records it wrote (same
    # choice and times), or for Triton a .best_config with no times at all: neither is a
    # new measurement, and the second must not replace a timed record.
    if old.meta.get("choice") != tuning.entry_meta(rec)["choice"]:
        return False
    return rec.time_ms is None or (old.meta.get("time_ms") == rec.time_ms
                                   and old.meta.get("candidates") == len(rec.candidates))


def record(
    store: Store,
    cache_dir: str | Path | None = None,
    *,
    branch: str = "main",
    observed: Observed | None = None,
    method: str = "",
    author: str | None = None,
    records: Iterable[tuning.Record] | None = None,
    since: float | None = None,
) -> RecordResult:
    """Commit the autotune results of ``cache_dir`` (default: torch's) on ``branch``.

    One commit, ``autotune: N kernels on <device>``, holding only records that are new
    or whose measurement changed; ``autotune_remote`` entries already on the branch are
    read too. ``records`` replaces reading the dir (distributed shards, tests); ``since``
    reads only the files written since then (a live session's own measurements).
    """
    tip = store.refs.get(branch_ref(branch))
    root = load_commit(store, tip).manifest if tip is not None else manifest.EMPTY
    if records is None:
        env = current_env().id
        remote = [(ek.key, store.objects.get(e.blob) or b"") for ek, e in manifest.entries(store, root)
                  if ek.kind == "autotune_remote" and ek.env == env]
        cdir = Path(cache_dir) if cache_dir is not None else _compat.torch_cache_dir()
        records = read_records(cdir, observed=observed, remote_values=remote, method=method, since=since)
    recs = list(records)
    for rec in recs:  # one impossible time or foreign source refuses the whole recording
        rec.check()
    env_id = store.objects.put_object(current_env())
    device = str(recs[0].provenance.get("device", "")) if recs else ""
    result = RecordResult(commit=None, device=device)
    chosen: dict[EntryKey, tuning.Record] = {}
    for rec in recs:
        ek = EntryKey(env_id, tuning.KIND, rec.key, rec.device_class)
        old = manifest.lookup(store, root, ek)
        if old is not None and _same_measurement(old, rec):
            result.unchanged += 1
            continue
        result.changed += old is not None
        chosen[ek] = rec
    if not chosen:
        return result
    blobs = store.objects.write([(ObjType.BLOB, r.to_bytes()) for r in chosen.values()])
    changes: dict[EntryKey, Entry | None] = {
        ek: Entry(oid, len(rec.to_bytes()), None, tuning.entry_meta(rec))
        for (ek, rec), oid in zip(chosen.items(), blobs, strict=True)
    }
    result.added = len(changes) - result.changed
    hosts = sorted({str(r.provenance.get("host", "")) for r in chosen.values()})
    ranks = sorted({int(r.provenance.get("rank", 0) or 0) for r in chosen.values()})
    meta = {"producer": "autotune", "device": device, "device_class": recs[0].device_class,
            "env": str(env_id), "kernels": len(changes), "hosts": hosts, "ranks": ranks,
            "time": int(time.time())}
    message = f"autotune: {len(changes)} kernels on {device or recs[0].device_class}"
    result.commit = commit_changes(store, branch, changes, message, meta, author=author)
    return result


# -- hydrate --------------------------------------------------------------------------------


def write_records(records: Iterable[tuning.Record], cache_dir: Path) -> int:
    """Write each record's choice where torch looks it up; returns records written.

    A GEMM record replaces its (op, inputs, precision) slot of the timing file with its
    candidate times, so torch's lookup hits and picks the recorded winner; a Triton record
    writes its ``.best_config`` as torch saved it. Each file is placed as an entry of its
    kind is (:meth:`cas.tuning.Record.target`, :func:`cas.torch.kinds.place`); a
    malformed record (:meth:`~cas.tuning.Record.problem`) and a remote one are skipped.
    Records of another device class are the caller's to filter out.
    """
    by_file: dict[Path, list[tuning.Record]] = {}
    written = 0
    for rec in records:
        target = rec.target() if rec.problem() is None else None
        if target is None:
            continue
        path = kinds.place(Path(cache_dir), *target, b"")
        if rec.op == "triton":
            _write(path, json.dumps(rec.source["content"]).encode())
            written += 1
        else:
            by_file.setdefault(path, []).append(rec)
    for path, recs in by_file.items():
        try:
            data = json.loads(path.read_bytes()) if path.exists() else {}
        except ValueError:
            data = {}
        data.setdefault("system", recs[0].source.get("system"))
        cache = data.setdefault("cache", {})
        for rec in recs:
            src = rec.source
            slot = cache.setdefault(src["op"], {}).setdefault(src["inputs_key"], {})
            slot[src["precision"]] = dict(rec.candidates)
            written += 1
        _write(path, json.dumps(data, indent=4).encode())
    return written


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class RecordsHere:
    """The records of some entries measured on this device class, and what was not used:
    records of other device classes, and malformed ones (``bad``: entry and why)."""

    records: list[tuning.Record] = field(default_factory=list)
    other_device: int = 0
    missing: int = 0
    bad: list[tuple[EntryKey, str]] = field(default_factory=list)


def records_for_here(store: Store, pairs: Iterable[tuple[EntryKey, Entry]]) -> RecordsHere:
    """The records among ``pairs`` measured on this device class, each read and checked
    (:meth:`cas.tuning.Record.from_bytes`, and the entry's own times): a malformed one
    is reported in ``bad``, never raised, so it cannot stop the others."""
    here, out = device_class(), RecordsHere()
    for ek, entry in pairs:
        if ek.kind != tuning.KIND:
            continue
        if ek.variant != here:
            out.other_device += 1
            continue
        data = blobs.read_or_skip(store, ek, entry)
        if data is None:
            out.missing += 1
            continue
        try:
            rec = tuning.Record.from_bytes(data)
            tuning.check_entry(ek, entry, rec)
        except BadAutotuneRecord as exc:
            out.bad.append((ek, exc.message))
            continue
        out.records.append(rec)
    return out


def records_in(store: Store, root: ObjectId) -> Mapping[EntryKey, Entry]:
    """The autotune-record entries of a manifest."""
    return {ek: e for ek, e in manifest.entries(store, root) if ek.kind == tuning.KIND}
