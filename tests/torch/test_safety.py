"""Never worse than no cache, and nothing untrusted reaches torch.

Broken stores and bad entries cost one warning and a normal, correct compile; bytes of
another env or a corrupt blob are never handed to torch; refs holding commits from an
untrusted remote are refused unless a trusted key signed them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from livekit import Recorded, recorded, seed_kernels, workload

from cas import manifest, provenance
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import PolicyError
from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env, Tag
from cas.refs import load_commit, resolve
from cas.store import Store
from cas.torch import policy

# -- broken stores and bad entries: one warning, a normal compile, right answers ---------


@pytest.fixture
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return recorded(tmp_path_factory)


def _compile_with(rec: Recorded, tmp_path: Path, store: Path):
    run = workload(seed_kernels(rec.cache_dir, tmp_path / "cache"), "--store", str(store), "--mode", "infer")
    assert run.rc == 0, run.stderr[-3000:]
    assert all(r["max_err"] < 1e-4 for r in run.out["runs"])
    assert len(run.cas_warnings()) == 1, run.stderr[-3000:]
    return run


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A store whose main holds ``change(store, key, entry)`` for each entry of src's."""
    with Store(src) as old, Store.init(dst) as new:
        root = load_commit(old, resolve(old, "main")).manifest
        changes = {}
        for k, e in manifest.entries(old, root):
            new.put(old.get(k.env), ObjType.ENV)
            k2, e2 = change(new, k, e, old.get(e.blob))
            changes[k2] = e2
        commit_changes(new, "main", changes, "rewritten")
    return dst


def test_a_corrupt_store_dir_costs_one_warning(rec: Recorded, tmp_path: Path) -> None:
    bad = tmp_path / "store"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"this is not an lmdb file" * 100)
    run = _compile_with(rec, tmp_path, bad)
    assert run.out["session"]["enabled"] is False
    assert run.counter("inductor", "fxgraph_cache_miss") == 1


def test_a_store_path_that_is_a_file_costs_one_warning(rec: Recorded, tmp_path: Path) -> None:
    bad = tmp_path / "store"
    bad.write_text("not a directory")
    run = _compile_with(rec, tmp_path, bad)
    assert run.out["session"]["enabled"] is False
    assert "cas:" in run.cas_warnings()[0]


def test_corrupt_blobs_are_never_handed_to_torch(rec: Recorded, tmp_path: Path) -> None:
    def corrupt(store: Store, k: EntryKey, e: Entry, data: bytes) -> tuple[EntryKey, Entry]:
        if k.kind in ("inductor", "aot_autograd"):
            # A fault injected below the store's own checks: bytes stored under an id
            # they do not hash to, as a flipped bit on disk would leave them.
            store.write([(e.blob, ObjType.BLOB, data[:100] + b"\x00" + data[101:])], verified=True)
        else:
            store.put(data)
        return k, e

    store = _rewrite(rec.store, tmp_path / "store", corrupt)
    run = _compile_with(rec, tmp_path, store)
    assert "corrupt" in run.cas_warnings()[0]
    assert run.counter("inductor", "fxgraph_cache_hit") == 0
    assert run.counter("aot_autograd", "autograd_cache_hit") == 0
    assert run.out["session"]["hydrated"]["corrupt"] == 5
    assert run.out["session"]["live"]["hits"] == 0


def test_entries_of_another_env_are_skipped(rec: Recorded, tmp_path: Path) -> None:
    with Store(rec.store) as s:
        k0 = next(k for k, _ in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest))
        fields = dict(Env.decode(s.get(k0.env)).fields)
    other = Env({**fields, "torch_key": "0" * 64, "torch_version": "2.99.0"})

    def move(store: Store, k: EntryKey, e: Entry, data: bytes) -> tuple[EntryKey, Entry]:
        store.put_object(other)
        store.put(data)
        return EntryKey(other.id, k.kind, k.key, k.variant), e

    store = _rewrite(rec.store, tmp_path / "store", move)
    run = _compile_with(rec, tmp_path, store)
    assert "another environment" in run.cas_warnings()[0]
    assert run.counter("inductor", "fxgraph_cache_hit") == 0
    assert run.out["session"]["hydrated"]["written"] == 0
    assert run.out["session"]["hydrated"]["skipped_other_env"] >= 5
    assert run.out["session"]["live"]["skipped_other_env"] >= 1


# -- the trust policy ---------------------------------------------------------------------


def _commit(store: Store, branch: str, key: str, **metadata: str) -> ObjectId:
    env = Env({"torch_key": "t"})
    store.put_object(env)
    blob = store.put(key.encode())
    entry = Entry(blob, len(key), None, {})
    return commit_changes(store, branch, {EntryKey(env.id, "inductor", key): entry}, key, metadata)


@pytest.fixture
def store(tmp_path: Path):
    with Store.init(tmp_path / "store") as s:
        yield s


def test_local_commits_are_allowed(store: Store) -> None:
    _commit(store, "main", "fa")
    assert policy.check_ref_allowed(store, "main").reason == "local"


def test_commits_from_an_untrusted_remote_are_refused_until_it_is_trusted(store: Store) -> None:
    _commit(store, "main", "fa")
    _commit(store, "main", "fb", remote="team")  # e.g. a merge commit made by pull
    with pytest.raises(PolicyError, match="untrusted remote 'team'"):
        policy.check_ref_allowed(store, "main")
    policy.set_remote_trusted(store, "team")
    verdict = policy.check_ref_allowed(store, "main")
    assert verdict.reason == "trusted-remote" and verdict.remotes == ("team",)


def test_what_a_remote_tracking_ref_reaches_is_that_remotes(store: Store) -> None:
    fetched = _commit(store, "incoming", "fa")
    # a commit with no recorded origin (e.g. fetched by an older cas): reachability decides
    store.set_meta(f"origin.{fetched.hex}", None)
    store.set_ref("refs/remotes/origin/main", fetched, expected=None, who="t", message="fetch")
    _commit(store, "main", "fb")
    store.set_ref("refs/heads/main", fetched, who="t", message="fast-forward pull")
    with pytest.raises(PolicyError, match="origin"):
        policy.check_ref_allowed(store, "main")
    with pytest.raises(PolicyError):
        policy.check_ref_allowed(store, "origin/main")
    # Provenance recorded locally wins over the heuristic (e.g. our own pushed commit).
    provenance.mark_local(store, fetched)
    assert policy.check_ref_allowed(store, "main").reason == "local"


def test_a_tag_signed_by_a_trusted_key_is_allowed(store: Store) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    target = _commit(store, "main", "fa", remote="team")
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes_raw()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    tag = Tag(target, ObjType.COMMIT, "release/1.0", "ci", int(time.time()), "release")
    signed = Tag(**{**tag.__dict__, "signature": policy.sign(raw, tag.signed_payload())})
    store.set_ref("refs/tags/release/1.0", store.put_object(signed), expected=None, who="t")

    with pytest.raises(PolicyError):  # signed, but by a key nobody trusts yet
        policy.check_ref_allowed(store, "release/1.0")
    policy.add_trusted_key(store, public)
    assert policy.check_ref_allowed(store, "release/1.0").reason == "signed"
    with pytest.raises(PolicyError):  # the branch itself is still unsigned remote work
        policy.check_ref_allowed(store, "main")
    forged = Tag(**{**tag.__dict__, "message": "evil", "signature": signed.signature})
    store.set_ref("refs/tags/forged", store.put_object(forged), expected=None, who="t")
    with pytest.raises(PolicyError):
        policy.check_ref_allowed(store, "forged")


def test_enable_on_a_refused_ref_serves_nothing_with_one_warning(store: Store) -> None:
    from cas.torch.enable import enable
    from cas.torch.live import CasWarning, _warned

    _warned.clear()
    _commit(store, "main", "fa", remote="team")
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
    from cas.torch.live import CasWarning, _warned

    _warned.clear()
    with pytest.warns(CasWarning, match="no cas store") as caught:
        session = enable(tmp_path / "missing", ref="main")
    try:
        assert len([w for w in caught if issubclass(w.category, CasWarning)]) == 1
        assert session.enabled is False and session.live is None
        assert session.flush() is None
        assert not (tmp_path / "missing").exists()
    finally:
        session.close()
