"""The live backend: torch's remote-cache get/put served from and recorded into the store."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from livekit import SHARES_RECORDED, Recorded, checks, recorded, served

from cas import manifest
from cas.digest import ObjectId
from cas.history import log
from cas.refs import load_commit, resolve
from cas.store import Store

pytestmark = SHARES_RECORDED


@pytest.fixture
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return recorded(tmp_path_factory)


def _entries(store: Store, ref: str) -> dict[str, list]:
    out: dict[str, list] = {}
    root = load_commit(store, resolve(store, ref)).manifest
    for k, e in manifest.entries(store, root):
        out.setdefault(k.kind, []).append((k, e))
    return out


def test_cold_run_records_what_torch_compiled_at_exit(rec: Recorded) -> None:
    live = rec.run.out["session"]["live"]
    # Inference: 1 FX graph + 1 AOT entry; training: forward and backward FX + 1 AOT.
    assert live["puts"] == 5 and live["hits"] == 0
    assert rec.run.out["session"]["pending"] == 5  # printed before exit: not yet committed
    with Store(rec.store) as store:
        commit = load_commit(store, resolve(store, "main"))
        assert commit.metadata["producer"] == "live"
        assert commit.metadata["compile_time_ms"] > 0
        by_kind = _entries(store, "main")
        assert len(by_kind["inductor"]) == 3 and len(by_kind["aot_autograd"]) == 2
        # What the remote caches never carry, from the cache dir: the C++ kernels.
        assert len(by_kind["cpp_kernel"]) >= 2
        for k, e in [x for xs in by_kind.values() for x in xs]:
            assert ObjectId.of(store.objects.get(e.blob)) == e.blob
            assert k.env.hex == commit.metadata["env"]


def test_live_answers_misses_from_the_store_without_hydrate(tmp_path_factory: pytest.TempPathFactory) -> None:
    # livekit's checks, run "live": kernels seeded, so torch's FX and AOT caches still
    # miss locally and ask the store.
    run = checks(tmp_path_factory).runs["live"]
    assert run.rc == 0, run.stderr[-3000:]
    assert run.counter("inductor", "fxgraph_cache_hit") == 3
    assert run.counter("aot_autograd", "autograd_cache_hit") == 2
    assert run.counter("inductor", "fxgraph_cache_miss") == 0
    live = run.out["session"]["live"]
    assert live["hits"] == 5 and live["misses"] == 0 and live["puts"] == 0
    assert all(r["max_err"] < 1e-4 for r in run.out["runs"])
    assert run.cas_warnings() == []


def test_enable_hydrates_and_no_compiler_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    # livekit's checks, run "hydrate": an empty cache dir, torch's in-memory caches cleared.
    run = checks(tmp_path_factory).runs["hydrate"]
    assert run.rc == 0, run.stderr[-3000:]
    assert run.out["session"]["hydrated"]["written"] >= 7
    assert run.counter("inductor", "fxgraph_cache_hit") == 3
    assert run.counter("aot_autograd", "autograd_cache_hit") == 2
    assert run.out["new_so"] == 0  # every kernel came from the store


def test_explicit_flush_commits_onto_a_branch_started_from_the_ref(tmp_path_factory: pytest.TempPathFactory) -> None:
    # livekit's served run: `cas run --record exp` of a program that calls flush itself.
    store_path, run = served(tmp_path_factory)
    assert run.rc == 3, run.stderr[-3000:]
    assert run.counter("inductor", "fxgraph_cache_hit") == 1  # mlp from the store
    assert run.counter("inductor", "fxgraph_cache_miss") == 1  # mlp-wide is new
    flushed = run.out["flushed"]
    assert flushed != "None"
    with Store(store_path) as store:
        exp, main = resolve(store, "exp"), resolve(store, "main")
        assert exp.hex == flushed  # the atexit flush found nothing more to commit
        assert load_commit(store, exp).parents == (main,)
        assert len(list(log(store, exp))) == len(list(log(store, main))) + 1
        new, old = _entries(store, "exp"), _entries(store, "main")
        assert len(new["inductor"]) == len(old["inductor"]) + 1
        assert len(new["aot_autograd"]) == len(old["aot_autograd"]) + 1


def test_autotune_and_pgo_round_trip_through_torchs_remote_caches(tmp_path: Path) -> None:
    from torch._inductor import remote_cache as rc
    from torch.compiler._cache import CacheArtifactManager

    from cas.torch.env import current_env
    from cas.torch.live import AUTOTUNE_REMOTE, LiveCache, install, uninstall

    # A flush records the process's Mega-Cache artifacts too; start from none, as a fresh
    # process would (other in-process tests of this worker may have left some).
    CacheArtifactManager.clear()
    store = Store.init(tmp_path / "store")
    best = {"XBLOCK": 128, "num_warps": 4, "num_stages": 1, "configs_hash": "abc"}
    state = b"\x80\x04pgo code state"
    try:
        writer = LiveCache(store, current_env(), root=None, branch="main")
        install(writer)
        rc.create_cache("c0ffee", False, None, "RemoteAutotuneCache").put("kern", best)
        pgo = rc.create_cache("dynamo-pgo", False, None, "RemoteDynamoPGOCache")
        pgo.put("job:0:", {"data": base64.b64encode(state).decode()})
        assert writer.flush() is not None
        kinds = {k.kind: k.key for k, _ in _flat(store)}
        assert kinds == {AUTOTUNE_REMOTE: "c0ffee::kern", "pgo": "job_0_"}

        root = load_commit(store, resolve(store, "main")).manifest
        install(LiveCache(store, current_env(), root=root, branch=None))
        assert rc.create_cache("c0ffee", False, None, "RemoteAutotuneCache").get("kern") == best
        got = rc.create_cache("dynamo-pgo", False, None, "RemoteDynamoPGOCache").get("job:0:")
        assert base64.b64decode(got["data"]) == state
        assert rc.create_cache("other", False, None, "RemoteAutotuneCache").get("kern") is None
        # Never the bundled autotune cache: it crashes compile without Triton.
        assert rc.RemoteBundledAutotuneCache.backend_override_cls is None
    finally:
        uninstall()
        store.close()


def _flat(store: Store) -> list:
    return list(manifest.entries(store, load_commit(store, resolve(store, "main")).manifest))


def test_a_bad_put_or_a_broken_store_is_one_warning_never_an_exception(tmp_path: Path) -> None:
    from cas.torch.env import current_env
    from cas.torch.live import LiveCache
    from cas.torch.warn import CasWarning, forget

    forget()
    store = Store.init(tmp_path / "store")
    live = LiveCache(store, current_env(), root=None, branch="main")
    with pytest.warns(CasWarning, match="could not record"):
        live.put("pt2:fx-graph-v1::fabc:c1", b"{not json")
        live.put("pt2:fx-graph-v1::fdef:c1", b'{"data": 5}')
    assert live.stats.errors == 2 and live.pending == 0
    # A manifest root the store does not hold (a damaged store): a miss and a warning.
    broken = LiveCache(store, current_env(), root=ObjectId.of(b"no such node"), branch=None)
    with pytest.warns(CasWarning, match="lookup failed"):
        assert broken.get("pt2:fx-graph-v1::fabc:c1") is None
        assert broken.get("pt2:fx-graph-v1::fabc:c1") is None
    assert broken.stats.errors == 1  # the manifest is not re-read on every lookup
    store.close()


def test_entries_recorded_live_have_the_keys_a_process_without_cas_looks_up(
    rec: Recorded, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Regression: enabling the AOT remote cache through functorch's config flag changed
    # every AOTAutograd key (the config is hashed), so live entries and plain captures
    # never met. A process without cas, on the recording run's own cache dir, must hit:
    # livekit's checks, run "plain" (the process's first run; cas not yet imported).
    got = checks(tmp_path_factory)
    run, cache = got.runs["plain"], got.caches["plain"]
    assert run.rc == 0, run.stderr[-3000:]
    assert run.out["session"] is None and run.out["cas_imported"] is False
    assert run.counter("inductor", "fxgraph_cache_hit") == 3
    assert run.counter("aot_autograd", "autograd_cache_hit") == 2
    with Store(rec.store) as store:
        recorded_aot = {k.key for k, _ in _entries(store, "main")["aot_autograd"]}
    assert recorded_aot == {p.name for p in (cache / "aotautograd").iterdir()}


def test_a_session_serves_what_it_records_only_when_it_records_into_the_ref_it_reads(tmp_path: Path) -> None:
    import json

    from cas.history import commit_changes
    from cas.objects import Entry, EntryKey
    from cas.refs import create_tag
    from cas.torch.enable import SAME_BRANCH, enable
    from cas.torch.env import current_env

    def wire(data: bytes) -> bytes:
        return json.dumps({"data": base64.b64encode(data).decode(), "time_taken_ms": 1}).encode()

    def served(got: bytes | None) -> bytes | None:
        return None if got is None else base64.b64decode(json.loads(got)["data"])

    key, new = "pt2:fx-graph-v1::fpinned:c1", "pt2:fx-graph-v1::fnew:c1"
    with Store.init(tmp_path / "store") as store:
        env = current_env()
        store.objects.put_object(env)
        pinned = EntryKey(env.id, "inductor", "fpinned", "")
        oid = commit_changes(store, "main", {pinned: Entry(store.objects.put(b"pinned"), 6)}, "seed")
        create_tag(store, "release/1.0", oid)
        # (ref read, branch recorded into, what a get of the pinned key and of a new key serve)
        cases = [("release/1.0", "mine", b"pinned", None), ("main", "other", b"pinned", None),
                 ("main", SAME_BRANCH, b"recorded", b"new")]
        for ref, record, at_key, at_new in cases:
            session = enable(store, ref=ref, record=record, hydrate=False, cache_dir=tmp_path / "cache")
            try:
                assert session.live is not None
                session.live.put(key, wire(b"recorded"))
                session.live.put(new, wire(b"new"))
                assert (served(session.live.get(key)), served(session.live.get(new))) == (at_key, at_new), ref
            finally:
                session.close()
        assert _entries(store, "mine")["inductor"]  # what a pinned session records is kept
