"""Capture then hydrate, with real torch in fresh processes: torch's own lookup must hit.

The session store holds one cold compile of every case (conftest ``captured``). The warm
process starts with an empty ``TORCHINDUCTOR_CACHE_DIR`` and ``TMPDIR``, which hydrate fills.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from torchkit import CASES, Captured, TorchEnv

from cas import manifest
from cas.digest import ObjectId
from cas.objects import EntryKey, Env
from cas.refs import branch_ref, load_commit, resolve
from cas.store import ObjectStore, Store
from cas.torch.capture import Artifact, commit_artifacts
from cas.torch.hydrate import hydrate, hydrate_safely
from cas.torch.kinds import path_for
from cas.torch.warn import forget


def _entries(store: Store, ref: str = "main") -> list[tuple[EntryKey, Any]]:
    root = load_commit(store, resolve(store, ref)).manifest
    return list(manifest.entries(store, root))


def _store_env(store: Store) -> Env:
    """The env the session's entries were captured under (this machine's)."""
    (env_id,) = {k.env for k, _ in _entries(store)}
    data = store.objects.get(env_id)
    assert data is not None
    return Env.decode(data)


@pytest.fixture(scope="module")
def warm(captured: Captured, torch_env: TorchEnv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A new machine: empty cache dir and empty default dir (fresh $TMPDIR); one fresh
    process hydrates from the session store, as a process about to compile would
    (workload.py: ``background=True``, so the precompiled header is written by a thread
    holding torch's lock for it while torch traces), then runs every case.
    (``cas hydrate`` before a fresh process: machine A of test_front_doors.py.)"""
    base = tmp_path_factory.mktemp("warm")
    torch_env.compiles()  # only this machine's compiler runs count
    out = torch_env.run(base / "cache", *CASES, "--small", "--hydrate", str(captured.store), "main",
                        tmpdir=base / "tmp")
    out["compiles"] = torch_env.compiles()
    return out


def test_capture_commits_every_kind_with_metadata(captured: Captured, session_store: Store) -> None:
    cap = captured.cold["capture"]
    assert cap["commit"] and cap["added"] > 0
    # FX graphs and AOT entries (Mega-Cache kinds) plus the C++ kernels Mega-Cache misses.
    assert cap["by_kind"]["inductor"] >= 6 and cap["by_kind"]["aot_autograd"] >= 5
    assert cap["by_kind"]["cpp_kernel"] >= 1 and cap["by_kind"]["cpp_pch"] >= 1
    commit = load_commit(session_store, ObjectId.parse(cap["commit"]))
    meta = dict(commit.metadata)
    assert meta["producer"] == "capture" and meta["compile_seconds"] > 0
    assert meta["kinds"] == cap["by_kind"] and meta["host"] and meta["producer"] == "capture"
    # Compile time spent, as torch recorded it inside each FX entry.
    assert meta["compile_seconds_recorded"] > 0
    fx = [e for k, e in _entries(session_store) if k.kind == "inductor"]
    assert fx and all(e.meta["compile_ms"] >= 0 for e in fx)


@pytest.mark.parametrize("case", CASES)
def test_hydrated_cache_hits_fx_and_aot(warm: dict[str, Any], case: str) -> None:
    res = warm["cases"][case]
    ind, aot = res["counters"]["inductor"], res["counters"]["aot_autograd"]
    assert ind.get("fxgraph_cache_miss", 0) == 0 and ind["fxgraph_cache_hit"] >= 1
    assert aot.get("autograd_cache_miss", 0) == 0 and aot["autograd_cache_hit"] >= 1
    if case.endswith(":train"):  # forward and backward graphs both come from the cache
        assert ind["fxgraph_cache_hit"] >= 2
    assert res["new_so"] == []


def test_no_cpp_compiler_runs_after_hydrate(warm: dict[str, Any], captured: Captured) -> None:
    # torch preprocesses (g++ -E) its precompiled-header include once per process to hash
    # it, whatever is cached; that is not a compile. Nothing may be compiled or linked.
    compiles = [c for c in warm["compiles"] if " -E " not in f" {c} "]
    assert compiles == []
    # ... while the cold run did compile (so the shim does see the compiler).
    assert any(c["new_so"] for c in captured.cold["cases"].values())
    assert warm["hydrate"]["by_kind"]["cpp_kernel"] >= 1
    # The precompiled header torch builds in every new process came from the store: the
    # hydrating thread wrote it, and torch waited for it rather than build its own.
    assert warm["hydrate"]["by_kind"]["cpp_pch"] >= 1 and warm["hydrate"]["pending"] == 0
    assert warm["cases"]["mlp:infer"]["counters"]["inductor"]["fxgraph_cache_hit"] == 1


def test_two_guard_variants_of_one_key_are_stored_and_both_hit(
    session_store: Store, warm: dict[str, Any]
) -> None:
    variants: dict[tuple[str, str], set[str]] = {}
    for k, e in _entries(session_store):
        if k.kind in ("inductor", "aot_autograd") and e.guards and "L['t0'] <= 128" in e.guards:
            variants.setdefault((k.kind, k.key), set())
    for k, e in _entries(session_store):
        if (k.kind, k.key) in variants:
            variants[(k.kind, k.key)].add(e.guards)
    assert {kind for kind, _ in variants} == {"inductor", "aot_autograd"}
    for guards in variants.values():
        assert guards == {"2 <= L['t0'] and L['t0'] <= 16", "32 <= L['t0'] and L['t0'] <= 128"}
    counters = warm["cases"]["ranged:infer"]["counters"]
    assert counters["inductor"]["fxgraph_cache_hit"] == 2
    assert counters["aot_autograd"]["autograd_cache_hit"] == 2


def test_entries_of_other_envs_are_skipped_and_counted(
    captured: Captured, torch_env: TorchEnv, tmp_path: Path
) -> None:
    with Store(captured.store) as store:
        here = _store_env(store)
        other = Env(dict(here.fields, torch_key="0" * 64, torch_version="2.99.0"))
        store.refs.set(branch_ref("mixed"), resolve(store, "main"), expected=None)
        commit_artifacts(store, [Artifact("inductor", "fzzzzother", b"not for this torch"),
                                 Artifact("aot_autograd", "azzzzother", b"nor this")],
                         branch="mixed", message="other env", env=other)
        n_here = len(_entries(store))
    cache = tmp_path / "cache"
    proc = torch_env.cas(captured.store, "--json", "hydrate", "mixed", "--cache-dir", str(cache),
                         tmpdir=tmp_path / "tmp")  # a new machine: nothing present yet
    res = json.loads(proc.stdout)
    assert res["skipped_other_env"] == 2 and res["written"] == n_here
    assert not list(cache.rglob("fzzzzother")) and not (cache / "aotautograd" / "azzzzother").exists()
    text = torch_env.cas(captured.store, "hydrate", "mixed", "--cache-dir", str(tmp_path / "c2")).stdout
    assert "2 of other envs" in text


class CorruptingObjects:
    """Fault injection: a real store's objects, whose reads of one blob come back altered."""

    def __init__(self, objects: ObjectStore, bad: ObjectId) -> None:
        self._objects, self._bad = objects, bad

    def get(self, oid: ObjectId, **kw: Any) -> bytes | None:
        data = self._objects.get(oid, **kw)
        return data[:-1] + bytes([data[-1] ^ 1]) if oid == self._bad and data else data

    def iter_blob(self, oid: ObjectId) -> Iterator[bytes]:
        for i, chunk in enumerate(self._objects.iter_blob(oid)):
            yield chunk[:-1] + bytes([chunk[-1] ^ 1]) if oid == self._bad and i == 0 else chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objects, name)


class CorruptingStore:
    """A real store whose ``objects`` are :class:`CorruptingObjects`."""

    def __init__(self, store: Store, bad: ObjectId) -> None:
        self._store = store
        self.objects = CorruptingObjects(store.objects, bad)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize("kind", ["inductor", "cpp_pch"])  # read whole / streamed
def test_corrupt_blob_is_skipped_with_a_warning(session_store: Store, tmp_path: Path, kind: str) -> None:
    entries = _entries(session_store)
    bad_key, bad = next((k, e) for k, e in entries if k.kind == kind)
    faulty = CorruptingStore(session_store, bad.blob)
    forget()  # a refused blob is reported once per process: maybe already, by another test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hydrate(faulty, "main", tmp_path, env=_store_env(session_store),  # type: ignore[arg-type]
                      pch_dir=tmp_path / "pch")
    assert res.corrupt == 1 and res.written == len(entries) - 1
    assert any("corrupt" in str(w.message) for w in caught)
    content = session_store.objects.get(bad.blob)
    assert content is not None
    # the corrupt variant's file is absent (other guard variants of the key may be written)
    assert not (tmp_path / path_for(kind, bad_key.key, content)).exists()
    assert not (tmp_path / "pch" / bad_key.key).exists()
    assert list(tmp_path.rglob("*.tmp")) == []  # no half-written file left behind


def test_hydrate_twice_writes_nothing_new(session_store: Store, tmp_path: Path) -> None:
    env = _store_env(session_store)
    first = hydrate(session_store, "main", tmp_path, env=env, pch_dir=tmp_path / "pch")
    again = hydrate(session_store, "main", tmp_path, env=env, pch_dir=tmp_path / "pch")
    assert first.written > 0 and again.written == 0 and again.present == first.written


def test_capture_cli_reads_a_cache_dir_and_keeps_the_first_entry(
    captured: Captured, torch_env: TorchEnv, tmp_path: Path
) -> None:
    store = tmp_path / "s"
    Store.init(store).close()
    # An empty TMPDIR: no precompiled header to add (the front doors' `cas capture` has one).
    tmp = tmp_path / "tmp"
    out = torch_env.cas(store, "--json", "capture", "--cache-dir", str(captured.cache_dir), "-m", "ci", tmpdir=tmp)
    first = json.loads(out.stdout)
    assert first["added"] > 0 and first["by_kind"]["cpp_kernel"] >= 1
    again = torch_env.cas(store, "capture", "--cache-dir", str(captured.cache_dir), "-m", "again", tmpdir=tmp)
    assert "nothing new" in again.stdout


def test_cli_errors_are_one_line(captured: Captured, torch_env: TorchEnv, tmp_path: Path) -> None:
    proc = torch_env.cas(captured.store, "hydrate", "no-such-ref", "--cache-dir", str(tmp_path), ok=False)
    assert proc.returncode == 3 and proc.stderr.startswith("cas: error:")
    assert "Traceback" not in proc.stderr
    proc = torch_env.cas(tmp_path / "nostore", "hydrate", "main", ok=False)
    assert proc.stderr.startswith("cas: error:") and "Traceback" not in proc.stderr
    proc = torch_env.cas(captured.store, "capture", "--cache-dir", str(tmp_path / "nope"), "-m", "x", ok=False)
    assert proc.returncode == 2 and "no such cache dir" in proc.stderr


@pytest.mark.parametrize("problem", ["missing", "garbage", "unknown-ref"])
def test_hydrate_safely_warns_once_and_lets_torch_compile(
    problem: str, captured: Captured, tmp_path: Path
) -> None:
    store, ref = tmp_path / "store", "main"
    if problem == "garbage":
        store.mkdir()
        (store / "data.mdb").write_bytes(b"\x00garbage" * 1000)
    elif problem == "unknown-ref":
        store, ref = captured.store, "no-such-branch"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hydrate_safely(store, ref, tmp_path / "cache") is None
    assert len(caught) == 1 and str(caught[0].message).startswith("cas: not hydrating")
    assert not (tmp_path / "cache").exists()
