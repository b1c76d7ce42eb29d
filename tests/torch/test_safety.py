"""Never worse than no cache, and nothing untrusted reaches torch.

Broken stores and bad entries cost one warning and a normal, correct compile; bytes of
another env or a corrupt blob are never handed to torch; refs holding commits from an
untrusted remote are refused unless a trusted key signed them (the rule itself is tested
in tests/test_policy.py, without torch; here, what enable does with its refusal).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from livekit import SHARES_RECORDED, Proc, checks

from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.store import Store

pytestmark = SHARES_RECORDED

# -- broken stores and bad entries: one warning, a normal compile, right answers ---------


def _checked(tmp_path_factory: pytest.TempPathFactory, name: str) -> Proc:
    """A run of livekit's ``checks`` (one process, one independent run per broken store):
    a normal, correct compile of the recorded MLP, kernels seeded, with one warning."""
    run = checks(tmp_path_factory).runs[name]
    assert run.rc == 0, run.stderr[-3000:]
    assert all(r["max_err"] < 1e-4 for r in run.out["runs"])
    assert len(run.cas_warnings()) == 1, run.stderr[-3000:]
    return run


def test_a_corrupt_store_dir_costs_one_warning(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = _checked(tmp_path_factory, "corrupt-dir")  # data.mdb is not an LMDB file
    assert run.out["session"]["enabled"] is False
    assert run.counter("inductor", "fxgraph_cache_miss") == 1


def test_a_store_path_that_is_a_file_costs_one_warning(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = _checked(tmp_path_factory, "store-file")
    assert run.out["session"]["enabled"] is False
    assert "cas:" in run.cas_warnings()[0]


def test_corrupt_blobs_are_never_handed_to_torch(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = _checked(tmp_path_factory, "corrupt-blobs")  # livekit._corrupt: FX and AOT blobs
    assert "corrupt" in run.cas_warnings()[0]
    assert run.counter("inductor", "fxgraph_cache_hit") == 0
    assert run.counter("aot_autograd", "autograd_cache_hit") == 0
    assert run.out["session"]["hydrated"]["corrupt"] == 5
    assert run.out["session"]["live"]["hits"] == 0


def test_entries_of_another_env_are_skipped(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = _checked(tmp_path_factory, "other-env")  # every entry moved to another torch's env
    assert "another environment" in run.cas_warnings()[0]
    assert run.counter("inductor", "fxgraph_cache_hit") == 0
    assert run.out["session"]["hydrated"]["written"] == 0
    assert run.out["session"]["hydrated"]["skipped_other_env"] >= 5
    assert run.out["session"]["live"]["skipped_other_env"] >= 1


# -- enable on a refused ref, or on no store ------------------------------------------


def test_enable_on_a_refused_ref_serves_nothing_with_one_warning(store: Store) -> None:
    from cas.torch.enable import enable
    from cas.torch.warn import CasWarning, forget

    forget()
    env = store.objects.put_object(Env({"torch_key": "t"}))
    entry = Entry(store.objects.put(b"fa"), 2, None, {})
    commit_changes(store, "main", {EntryKey(env, "inductor", "fa"): entry}, "fa", {"remote": "team"})
    with pytest.warns(CasWarning, match="untrusted remote") as caught:
        session = enable(store, ref="main", hydrate=True)
    try:
        assert len([w for w in caught if issubclass(w.category, CasWarning)]) == 1
        assert session.policy == "refused" and session.hydrated is None
        assert session.live is not None and session.live.root is None
    finally:
        session.close()


def test_enable_on_a_missing_store_is_one_warning_and_creates_nothing(tmp_path: Path) -> None:
    from cas.torch.enable import enable
    from cas.torch.warn import CasWarning, forget

    forget()
    with pytest.warns(CasWarning, match="no cas store") as caught:
        session = enable(tmp_path / "missing", ref="main")
    try:
        assert len([w for w in caught if issubclass(w.category, CasWarning)]) == 1
        assert session.enabled is False and session.live is None
        assert session.flush() is None
        assert not (tmp_path / "missing").exists()
    finally:
        session.close()
