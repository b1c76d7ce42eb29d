"""``torch.compile(model, backend="cas")`` through the torch_dynamo_backends entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from livekit import SHARES_RECORDED, Recorded, base_env, checks, copy_store, recorded, workload

from cas import manifest
from cas.refs import load_commit, resolve
from cas.store import Store

pytestmark = SHARES_RECORDED


def test_the_entry_point_registers_backend_cas() -> None:
    import torch
    from torch._dynamo.backends.registry import lookup_backend

    from cas.torch.backend import cas_backend

    assert "cas" in torch._dynamo.list_backends(exclude_tags=())
    assert lookup_backend("cas") is cas_backend


def test_backend_cas_starts_warm_from_cas_dir_and_records_new_graphs(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    rec: Recorded = recorded(tmp_path_factory)
    store_path = copy_store(rec.store, tmp_path / "store")
    with Store(store_path) as store:
        before = {k for k, _ in manifest.entries(store, load_commit(store, resolve(store, "main")).manifest)}
    # The program only says backend="cas"; where the store is comes from CAS_DIR.
    run = workload(tmp_path / "cache", "--backend", "cas", "--models", "mlp,mlp-wide",
                   env=base_env(CAS_DIR=str(store_path)))
    assert run.rc == 0, run.stderr[-3000:]
    session = run.out["session"]
    assert session["enabled"] and session["policy"] == "local"
    assert session["hydrated"]["written"] >= 4
    assert run.counter("inductor", "fxgraph_cache_hit") == 1  # mlp: hydrated from the store
    assert run.counter("aot_autograd", "autograd_cache_hit") == 1
    assert run.counter("inductor", "fxgraph_cache_miss") == 1  # mlp-wide: new, compiled
    assert all(r["max_err"] < 1e-4 for r in run.out["runs"])
    assert run.cas_warnings() == []
    with Store(store_path) as store:  # recorded into main at exit (CAS_RECORD defaults to the ref)
        after = {k for k, _ in manifest.entries(store, load_commit(store, resolve(store, "main")).manifest)}
    added = after - before
    assert {k.kind for k in added} >= {"inductor", "aot_autograd"}
    assert before <= after


def test_backend_cas_without_a_store_is_plain_inductor_and_one_warning(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # livekit's checks, run "backend-no-store": CAS_DIR is a file, CAS_RECORD="".
    run = checks(tmp_path_factory).runs["backend-no-store"]
    assert run.rc == 0, run.stderr[-3000:]
    assert run.counter("inductor", "fxgraph_cache_miss") == 1
    assert all(r["max_err"] < 1e-4 for r in run.out["runs"])
    assert len(run.cas_warnings()) == 1, run.stderr[-3000:]
    assert run.out["session"]["enabled"] is False


def test_backend_records_into_the_ref_only_when_it_is_a_branch(tmp_path: Path) -> None:
    from cas.history import commit_changes
    from cas.objects import Entry, EntryKey, Env
    from cas.refs import create_tag
    from cas.torch.enable import SAME_BRANCH, enable

    with Store.init(tmp_path / "store") as store:
        env = Env({"torch_key": "t"})
        store.objects.put_object(env)
        blob = store.objects.put(b"x")
        oid = commit_changes(store, "main", {EntryKey(env.id, "inductor", "f1"): Entry(blob, 1)}, "x")
        create_tag(store, "release/1.0", oid)
        expected = {"main": "main", "release/1.0": None, oid.hex[:12]: None, "new": "new"}
        for ref, record in expected.items():
            session = enable(store, ref=ref, record=SAME_BRANCH, hydrate=False)
            try:
                assert session.record == record, ref
            finally:
                session.close()
