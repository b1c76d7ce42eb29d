"""Never worse than no cache, and nothing untrusted reaches torch.

Broken stores and bad entries cost one warning and a normal, correct compile; bytes of
another env or a corrupt blob are never handed to torch; refs holding commits from an
untrusted remote are refused unless a trusted key signed them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

# `recorded` is imported for tests/conftest.py, which puts the modules holding that name
# on one xdist worker: checks() starts from livekit's recorded run, cached per process.
from livekit import Proc, checks, recorded  # noqa: F401

from cas import provenance
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import PolicyError
from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env, Tag
from cas.store import Store
from cas.torch import policy

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
    from cas.torch.warn import CasWarning, forget

    forget()
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
