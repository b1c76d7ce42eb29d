"""Distributed autotune: two gloo ranks share the tuning of one compile, the union lands
as one commit, and a job on another store, after ``cas pull`` and ``cas hydrate``, has
the very timing entries torch looks up for every GEMM of that compile.

That a compile on a new machine benchmarks nothing once those entries are hydrated is
shown with a real compile by test_autotune_replay.py (records of a single process, the
same kernels, the same timing file); here the distributed union must write back that
same file, key for key and candidate for candidate, as torch itself wrote it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from autotune_fixtures import MARKER, WORKLOAD, Tuned, seed_kernels
from torchkit import TorchEnv

from cas import refs
from cas.store import Store
from cas.torch.autotune import records_in


def test_two_ranks_split_the_tuning_and_a_pulled_store_hydrates_every_timing_torch_looks_up(
    torch_env: TorchEnv, tuned: Tuned, tmp_path: Path
) -> None:
    tuner, job = tmp_path / "tuner", tmp_path / "job"
    torch_env.cas(tuner, "init")
    # The ranks start with the session cold run's compiled C++ kernels (code only: no
    # FX/AOT entries, no timing files), so g++ does not rebuild what that run built, and
    # share its TMPDIR (its precompiled header). They still benchmark their share
    # (timings decide, not kernels on disk).
    for rank in (0, 1):  # autotune_workload.py gives rank N the cache dir <cache>/rankN
        seed_kernels(tuned, tmp_path / "cache" / f"rank{rank}")
    run = torch_env.python(tmp_path / "cache", str(WORKLOAD), str(tuner), "--record", "main", "--ranks", "2",
                           marker=MARKER, tmpdir=tuned.tmpdir, timeout=900)
    ranks = sorted(run["ranks"], key=lambda r: r["rank"])
    # each rank benchmarked its own share of the three GEMM shapes, and only that
    assert [r["tuned"] for r in ranks] == [2, 1] and [r["skipped"] for r in ranks] == [1, 2]
    assert [r["benchmarks"]["select_algorithm_autotune"] for r in ranks] == [2, 1]
    assert "recorded" in ranks[0] and "recorded" not in ranks[1]

    with Store(tuner) as store:
        head = refs.load_commit(store, refs.resolve(store, "main"))
        assert head.parents == () and head.message.startswith("autotune: 3 kernels on ")
        assert head.metadata["ranks"] == [0, 1] and len(records_in(store, head.manifest)) == 3
        by_rank = sorted(e.meta["rank"] for e in records_in(store, head.manifest).values())
    assert by_rank == [0, 0, 1]

    # A later job on another machine: its own store, filled by cas pull; an empty cache
    # dir and TMPDIR, hydrated by the real command line.
    torch_env.cas(job, "init")
    torch_env.cas(job, "remote", "add", "tuner", str(tuner), "--trusted")
    torch_env.cas(job, "pull", "tuner", "main")
    hydrated = json.loads(torch_env.cas(job, "--json", "hydrate", "main", "--cache-dir", str(tmp_path / "job-cache"),
                                        tmpdir=tmp_path / "job-tmp").stdout)
    assert hydrated["by_kind"] == {"autotune_record": 3}
    # torch's lookup hits when every candidate of (op, inputs, precision) has a time in
    # the timing file of this system: the same entries the cold compile of this model
    # wrote (tuned: one process, all three shapes benchmarked).
    assert timing_keys(tmp_path / "job-cache") == timing_keys(tuned.cache) != {}
    # ... each with the time its rank measured (a number torch can compare, not a null).
    times = [t for f in (tmp_path / "job-cache" / "cache").iterdir()
             for by_inputs in json.loads(f.read_text())["cache"].values()
             for by_prec in by_inputs.values() for choices in by_prec.values() for t in choices.values()]
    assert times and all(isinstance(t, float) and math.isfinite(t) and t > 0 for t in times), times


def timing_keys(cache_dir: Path) -> dict[str, dict[str, dict[str, dict[str, set[str]]]]]:
    """The select_algorithm timing files under ``cache_dir``: file -> op -> inputs -> precision -> choices."""
    return {f.name: {op: {inputs: {prec: set(times) for prec, times in by_prec.items()}
                          for inputs, by_prec in by_inputs.items()}
                     for op, by_inputs in json.loads(f.read_text())["cache"].items()}
            for f in (cache_dir / "cache").iterdir()}
