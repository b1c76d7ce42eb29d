"""The trust policy (cas.trust.policy): which refs may hand their bytes to torch.

Local commits are allowed; commits from an untrusted remote are refused until it is
trusted; a tag signed by a trusted key is allowed whatever its history. A reader that
follows a moving ref (the Redis door) gets the same verdicts from ``AllowedCommits``.
"""

from __future__ import annotations

import time

import pytest

from cas import provenance, trust
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import PolicyError
from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env, Tag
from cas.store import Store


def _commit(store: Store, branch: str, key: str, **metadata: str) -> ObjectId:
    env = Env({"torch_key": "t"})
    store.objects.put_object(env)
    blob = store.objects.put(key.encode())
    entry = Entry(blob, len(key), None, {})
    return commit_changes(store, branch, {EntryKey(env.id, "inductor", key): entry}, key, metadata)


def test_local_commits_are_allowed(store: Store) -> None:
    _commit(store, "main", "fa")
    assert trust.check_ref_allowed(store, "main").reason == "local"


def test_commits_from_an_untrusted_remote_are_refused_until_it_is_trusted(store: Store) -> None:
    _commit(store, "main", "fa")
    _commit(store, "main", "fb", remote="team")  # e.g. a merge commit made by pull
    with pytest.raises(PolicyError, match="untrusted remote 'team'"):
        trust.check_ref_allowed(store, "main")
    trust.set_remote_trusted(store, "team")
    verdict = trust.check_ref_allowed(store, "main")
    assert verdict.reason == "trusted-remote" and verdict.remotes == ("team",)


def test_what_a_remote_tracking_ref_reaches_is_that_remotes(store: Store) -> None:
    fetched = _commit(store, "incoming", "fa")
    # a commit with no recorded origin (e.g. fetched by an older cas): reachability decides
    store.meta.set(f"origin.{fetched.hex}", None)
    store.refs.set("refs/remotes/origin/main", fetched, expected=None, who="t", message="fetch")
    _commit(store, "main", "fb")
    store.refs.set("refs/heads/main", fetched, who="t", message="fast-forward pull")
    with pytest.raises(PolicyError, match="origin"):
        trust.check_ref_allowed(store, "main")
    with pytest.raises(PolicyError):
        trust.check_ref_allowed(store, "origin/main")
    # Provenance recorded locally wins over the heuristic (e.g. our own pushed commit).
    provenance.mark_local(store, fetched)
    assert trust.check_ref_allowed(store, "main").reason == "local"


def test_a_tag_signed_by_a_trusted_key_is_allowed(store: Store) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    target = _commit(store, "main", "fa", remote="team")
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes_raw()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    tag = Tag(target, ObjType.COMMIT, "release/1.0", "ci", int(time.time()), "release")
    signed = Tag(**{**tag.__dict__, "signature": trust.sign(raw, tag.signed_payload())})
    store.refs.set("refs/tags/release/1.0", store.objects.put_object(signed), expected=None, who="t")

    with pytest.raises(PolicyError):  # signed, but by a key nobody trusts yet
        trust.check_ref_allowed(store, "release/1.0")
    trust.add_trusted_key(store, public)
    assert trust.check_ref_allowed(store, "release/1.0").reason == "signed"
    with pytest.raises(PolicyError):  # the branch itself is still unsigned remote work
        trust.check_ref_allowed(store, "main")
    forged = Tag(**{**tag.__dict__, "message": "evil", "signature": signed.signature})
    store.refs.set("refs/tags/forged", store.objects.put_object(forged), expected=None, who="t")
    with pytest.raises(PolicyError):
        trust.check_ref_allowed(store, "forged")




def test_allowed_commits_reads_only_what_is_new_and_refuses_a_remote_commit_on_top(store: Store) -> None:
    allowed = trust.AllowedCommits(store)
    first = _commit(store, "main", "fa")
    assert allowed.check("refs/heads/main", first) == first
    second = _commit(store, "main", "fb")  # local, on top of an allowed tip
    assert allowed.check("refs/heads/main", second) == second
    merged = _commit(store, "main", "fc", remote="team")  # e.g. a merge commit made by pull
    with pytest.raises(PolicyError, match="untrusted remote 'team'"):
        allowed.check("refs/heads/main", merged)
    trust.set_remote_trusted(store, "team")
    assert allowed.check("refs/heads/main", merged) == merged


def test_allowed_commits_judges_the_value_it_was_given_not_where_the_ref_moved_since(store: Store) -> None:
    untrusted = _commit(store, "main", "fa", remote="team")
    local = _commit(store, "other", "fb")
    store.refs.set("refs/heads/main", local, who="t", message="reset")  # moved after the read
    with pytest.raises(PolicyError, match="untrusted remote 'team'"):
        trust.AllowedCommits(store).check("refs/heads/main", untrusted)


def test_allowed_commits_peels_a_signed_tag(store: Store) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    target = _commit(store, "main", "fa", remote="team")
    raw = Ed25519PrivateKey.generate().private_bytes_raw()
    tag = Tag(target, ObjType.COMMIT, "release/1.0", "ci", int(time.time()), "release")
    signed = store.objects.put_object(Tag(**{**tag.__dict__, "signature": trust.sign(raw, tag.signed_payload())}))
    trust.add_trusted_key(store, trust.public_key(raw))
    assert trust.AllowedCommits(store).check("refs/tags/release/1.0", signed) == target
