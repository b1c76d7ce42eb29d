"""Distributed autotune: two gloo ranks share the tuning of one compile, the union lands
as one commit, and a job on another store benchmarks nothing after ``cas pull``."""

from __future__ import annotations

from pathlib import Path

from autotune_fixtures import MARKER, WORKLOAD, Tuned, seed_kernels
from torchkit import TorchEnv

from cas import refs
from cas.store import Store
from cas.torch.autotune import records_in


def test_two_ranks_split_the_tuning_and_a_pulled_store_replays_it(
    torch_env: TorchEnv, tuned: Tuned, tmp_path: Path
) -> None:
    tuner, job = tmp_path / "tuner", tmp_path / "job"
    torch_env.cas(tuner, "init")
    # Every process here starts with the session cold run's compiled C++ kernels (code
    # only: no FX/AOT entries, no timing files), so g++ does not rebuild what that run
    # built; the ranks also share its TMPDIR (its precompiled header). The ranks still
    # benchmark their share (timings decide, not kernels on disk); the job still starts
    # with no autotune entries and an empty TMPDIR, and must benchmark nothing.
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

    # A later job on another machine: its own store, filled by cas pull; fresh torch dirs.
    torch_env.cas(job, "init")
    torch_env.cas(job, "remote", "add", "tuner", str(tuner), "--trusted")
    torch_env.cas(job, "pull", "tuner", "main")
    seed_kernels(tuned, tmp_path / "job-cache")
    replay = torch_env.python(tmp_path / "job-cache", str(WORKLOAD), str(job), "--hydrate", "main",
                              marker=MARKER, tmpdir=tmp_path / "job-tmp", timeout=600)
    assert replay["hydrated"] == {"autotune_record": 3}
    assert not any(replay["benchmarks"].values())
