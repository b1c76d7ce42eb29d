"""Autotune records through the recording front doors: ``cas run --record``, ``cas
capture`` and ``cas.torch.enable(record=...)`` (which ``backend="cas"`` uses too).

No compile of its own: the session's cold run (``tuned``: the three-GEMM workload of
autotune_workload.py, ``mode="max-autotune"``, freezing) runs under ``cas run --record
main`` on a store that only ``cas run`` writes (the workload records into another).
``cas capture`` then reads the cache dir that compile left.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from autotune_fixtures import Tuned
from torchkit import TorchEnv

from cas import history, manifest, tuning
from cas.refs import load_commit, resolve
from cas.store import Store

CPU_FILE = Path(__file__).parent.parent / "data" / "autotune" / "cpu-timing-file.json"


@dataclass
class Ran:
    store: Path  # the store `cas run --record main` recorded into
    cache: Path  # torch's cache dir of that compile
    workload: dict[str, Any]  # what the workload printed (benchmarks torch ran)
    stderr: str


@pytest.fixture(scope="module")
def ran(tuned: Tuned) -> Ran:
    # The session's cold compile (autotune_fixtures.py) ran under `cas run --record main`
    # on a store of its own: nothing on disk had timings, so torch benchmarked every GEMM
    # shape, and that is what `cas run` recorded. The workload was given machine A's store
    # (it records there itself), never this one.
    return Ran(tuned.door, tuned.cache, tuned.run, tuned.door_stderr)


def commits(store: Store, ref: str) -> list[tuple[str, dict[str, Any]]]:
    return [(c.message, c.metadata) for _, c in history.log(store, resolve(store, ref))]


def records(store: Store, ref: str) -> list[tuning.Record]:
    root = load_commit(store, resolve(store, ref)).manifest
    return [tuning.Record.from_bytes(store.objects.get(e.blob) or b"")
            for k, e in manifest.entries(store, root) if k.kind == tuning.KIND]


def test_cas_run_record_commits_what_the_compile_autotuned(ran: Ran, torch_env: TorchEnv) -> None:
    assert ran.workload["benchmarks"]["select_algorithm_autotune"] == 3  # it really autotuned
    with Store(ran.store) as store:
        log = commits(store, "main")
        recs = records(store, "main")
        ids = {h.hex for h, _ in history.log(store, resolve(store, "main"))}
    assert ran.workload["recorded"]["commit"] not in ids  # the workload recorded elsewhere (A)
    # newest first: the autotune commit of its own, on top of the live commit of the entries
    (tuned_msg, tuned_meta), (live_msg, live_meta) = log
    assert tuned_msg.startswith("autotune: 3 kernels on ") and tuned_meta["producer"] == "autotune"
    assert live_meta["producer"] == "live" and live_meta["kinds"].get("gemm_timing") == 1
    assert len(recs) == 3 and {r.op for r in recs} == {"packed_linear"}
    assert {r.method for r in recs} == {"select_algorithm"} and all(len(r.candidates) == 2 for r in recs)
    # watched during the session: when each GEMM was measured, not the timing file's mtime
    assert len({r.provenance["time"] for r in recs}) == 3
    picked = ran.workload["picked"]
    assert {r.config["choice"] for r in recs} == {picked[f"{r.op} {r.source['inputs_key']}"] for r in recs}
    assert "and 3 autotune records recorded on main" in ran.stderr

    shown = json.loads(torch_env.cas(ran.store, "--json", "autotune", "log", "main").stdout)
    assert len(shown) == 3 and {row["op"] for row in shown} == {"packed_linear"}
    assert all(row["time_ms"] > 0 and row["commit"] for row in shown)
    table = torch_env.cas(ran.store, "autotune", "log", "main")
    assert "packed_linear" in table.stdout and "3 records" in table.stderr


def test_cas_capture_commits_autotune_records_after_the_entries(
    ran: Ran, torch_env: TorchEnv, tmp_path: Path
) -> None:
    store_path = tmp_path / "store"
    Store.init(store_path).close()
    out = torch_env.cas(store_path, "capture", "--cache-dir", str(ran.cache), "-m", "tuned run").stdout
    assert "] tuned run" in out and "] autotune: 3 kernels on " in out
    with Store(store_path) as store:
        (tuned_msg, _), (capture_msg, capture_meta) = commits(store, "main")
        assert capture_msg == "tuned run" and capture_meta["kinds"]["gemm_timing"] == 1
        assert tuned_msg.startswith("autotune: 3 kernels on ")
        assert len(records(store, "main")) == 3
    shown = json.loads(torch_env.cas(store_path, "--json", "autotune", "log").stdout)
    assert len(shown) == 3 and all(row["op"] == "packed_linear" for row in shown)

    # Captured again: nothing new, neither entries nor records.
    again = json.loads(torch_env.cas(store_path, "--json", "capture", "--cache-dir", str(ran.cache),
                                     "-m", "again").stdout)
    assert again["commit"] is None and again["autotune"]["commit"] is None
    assert again["autotune"]["unchanged"] == 3


def test_enable_record_commits_only_what_was_tuned_during_the_session(tmp_path: Path) -> None:
    import torch._dynamo  # noqa: F401  (enable installs its backend once dynamo is imported)
    from torch._inductor import select_algorithm
    from torch._inductor.codecache import CacheBase
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    from cas.torch.enable import enable

    cache = tmp_path / "cache"
    timing = cache / "cache" / str(CacheBase.get_system()["hash"])
    timing.parent.mkdir(parents=True)
    shutil.copyfile(CPU_FILE, timing)
    an_hour_ago = time.time() - 3600
    os.utime(timing, (an_hour_ago, an_hour_ago))  # tuned before the session: not its measurement

    savers = len(select_algorithm.get_algorithm_selector_cache().feedback_saver_fns)
    bench_all = CachingAutotuner.benchmark_all_configs
    session = enable(tmp_path / "store", ref="main", record="exp", cache_dir=cache, hydrate=False)
    try:  # the session watches autotune while it lasts
        assert len(select_algorithm.get_algorithm_selector_cache().feedback_saver_fns) == savers + 1
        assert CachingAutotuner.benchmark_all_configs is not bench_all
        session.flush()
        assert session.live is not None and session.live.stats.autotuned == 0
        timing.write_bytes(CPU_FILE.read_bytes())  # torch rewrites the file when it tunes
        session.flush()
        assert session.live.stats.autotuned == 3
        assert session.stats()["live"]["autotuned"] == 3
    finally:
        session.close()
    assert len(select_algorithm.get_algorithm_selector_cache().feedback_saver_fns) == savers
    assert CachingAutotuner.benchmark_all_configs is bench_all
    with Store(tmp_path / "store") as store:
        messages = [m for m, _ in commits(store, "exp")]
        assert [m.split(" on ")[0] for m in messages if m.startswith("autotune:")] == ["autotune: 3 kernels"]
        assert messages[0].startswith("autotune: 3 kernels on ")
        assert len(records(store, "exp")) == 3
