"""Revocations (cas.revocations, cas.sync.revoked): `cas revoke` on machine A travels by
push to a remote and by clone/fetch/pull to machine B, which honours it from every ref,
older tags included, if it trusts where it came from or who signed it; bad input is one
line and writes nothing; a merge never brings a revoked entry back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from servers import Served

from cas import history, manifest, revocations, sync, trust
from cas.objects import Entry, EntryKey, Env
from cas.refs import load_commit, resolve
from cas.remote.local import LocalRemote
from cas.store import Store

ENV = Env({"device": "cpu-test", "torch_version": "2.13.0"})
BAD = "fbadgraph0000000000000000000000000000000000000000000"
GOOD = "fgoodgraph000000000000000000000000000000000000000000"


def _commit(path: Path, names: dict[str, bytes], message: str, branch: str = "main") -> None:
    """Commit entries ``{cache key: bytes}`` (None bytes removes) on ``branch``."""
    with Store(path) as s:
        env = s.objects.put_object(ENV)
        changes = {EntryKey(env, "inductor", k): Entry(s.objects.put(d), len(d)) for k, d in names.items()}
        history.commit_changes(s, branch, changes, message, {"producer": "test", "host": "machine-a"})


def _machine_a(cas: Any) -> Any:
    """A: main holds BAD and GOOD, tagged release/1.0; then main moves on without BAD."""
    cas("init")
    _commit(cas.store, {BAD: b"miscompiled kernel", GOOD: b"good kernel"}, "compile v1")
    cas("tag", "release/1.0", "main", "-m", "release")
    with Store(cas.store) as s:
        env = ENV.id
        history.commit_changes(s, "main", {EntryKey(env, "inductor", BAD): None}, "drop it from main")
    return cas


def _revoked(path: Path) -> set[bytes]:
    with Store(path) as s:
        return {b.raw for b in revocations.load(s).by_blob}


def _blob_of(path: Path, key: str, ref: str = "release/1.0") -> bytes:
    with Store(path) as s:
        root = load_commit(s, resolve(s, ref)).manifest
        (entry,) = [e for k, e in manifest.entries(s, root) if k.key == key]
        return entry.blob.raw


def _other(cas: Any, path: Path) -> Any:
    return type(cas)(path, cas.env)


def test_a_revocation_travels_by_push_and_clone_and_holds_for_an_older_tag(cas: Any, tmp_path: Path) -> None:
    a = _machine_a(cas)
    # the entry is only in the older tag: revoking it is exactly the use case
    out = json.loads(a("--json", "revoke", BAD[:12], "-m", "wrong results on H100").stdout)
    bad = _blob_of(a.store, BAD)
    assert [r["blob"] for r in out["revoked"]] == [bad.hex()] and out["revoked"][0]["key"] == BAD
    remote = _other(cas, tmp_path / "remote")
    remote("init")
    a("remote", "add", "origin", str(remote.store))
    pushed = a("push", "origin", "main").stdout
    assert "cas/revocations" in pushed  # carried although only main was named
    a("push", "origin", "--tags")

    b = _other(cas, tmp_path / "b")
    a("clone", str(remote.store), str(b.store), "--trusted")
    assert _revoked(b.store) == {bad}
    explain = json.loads(b("--json", "log", "--entry", BAD, "release/1.0").stdout)
    assert [e["action"] for e in explain] == ["revoked", "added"]
    assert explain[0]["message"] == "wrong results on H100" and explain[0]["author"] == "tester@example"
    assert "revoked" in b("log", "cas/revocations").stdout


def test_a_revocation_from_an_untrusted_remote_is_ignored_with_a_warning(cas: Any, tmp_path: Path) -> None:
    a = _machine_a(cas)
    a("revoke", BAD, "-m", "poisoned")
    b = _other(cas, tmp_path / "b")
    proc = a("clone", str(a.store), str(b.store))  # not --trusted, and not signed
    assert "warning: cas/revocations from the remote not taken: 1 revocation(s) ignored" in proc.stderr
    assert _revoked(b.store) == set()
    with Store(b.store) as s:
        assert s.refs.get(revocations.REF) is None  # kept only in refs/remotes/origin/...
        assert s.refs.get("refs/remotes/origin/cas/revocations") is not None
    # trusting the remote later and fetching again takes it in
    b("remote", "remove", "origin")
    b("remote", "add", "origin", str(a.store), "--trusted")
    b("fetch", "origin")
    assert _revoked(b.store) == {_blob_of(a.store, BAD)}


def test_a_signed_revocation_is_honoured_from_an_untrusted_remote(cas: Any, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    a = _machine_a(cas)
    private = Ed25519PrivateKey.generate().private_bytes_raw()
    keyfile = tmp_path / "signing.key"
    keyfile.write_text(private.hex())
    a("revoke", BAD, "-m", "poisoned", "--sign-key", str(keyfile))
    b = _other(cas, tmp_path / "b")
    b("init")
    with Store(b.store) as s:
        trust.add_trusted_key(s, trust.public_key(private))
    b("remote", "add", "origin", str(a.store))
    proc = b("pull", "origin", "main")
    assert "warning" not in proc.stderr
    assert _revoked(b.store) == {_blob_of(a.store, BAD)}
    # a forged copy (another reason under the same signature) is not honoured
    with Store(b.store) as s:
        tip = s.refs.get(revocations.REF)
        assert tip is not None
        c = load_commit(s, tip)
        forged = type(c)(c.manifest, c.parents, c.author, c.time, c.message, {**c.metadata, "reason": "x"})
        oid = s.objects.put_object(forged)
        s.meta.set(f"origin.{oid.hex}", f"remote:{a.store}")
        assert revocations.honoured(s, oid, forged) is not None


def test_bad_input_is_one_line_and_writes_nothing(cas: Any) -> None:
    a = _machine_a(cas)
    for args, code, text in [
        (("fnosuchkey000",), 3, "no entry with key or blob 'fnosuchkey000'"),
        (("release/1.0",), 2, "release/1.0 is a tag, not an entry"),
        ((resolve_hex(a, "release/1.0"),), 2, "is a tag, not an entry's blob"),
        ((resolve_hex(a, "main"),), 2, "is a commit, not an entry's blob"),
        ((BAD, "--ref", "nosuchref"), 3, "unknown revision 'nosuchref'"),
    ]:
        proc = a("revoke", *args, "-m", "why", ok=False)
        assert proc.returncode == code and text in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2 and "Traceback" not in proc.stderr
    assert "cas tag -d" in a("revoke", resolve_hex(a, "release/1.0"), "-m", "why", ok=False).stderr
    assert a("revoke", BAD, "-m", "  ", ok=False).returncode == 2
    assert _revoked(a.store) == set()
    with Store(a.store) as s:
        assert s.refs.get(revocations.REF) is None
    a("revoke", BAD, "-m", "once")
    again = a("revoke", BAD, "-m", "twice", ok=False)
    assert again.returncode == 2 and "already revoked by tester@example" in again.stderr


def resolve_hex(cas: Any, rev: str) -> str:
    with Store(cas.store) as s:
        found = s.refs.get(f"refs/tags/{rev}") or s.refs.get(f"refs/heads/{rev}")
        assert found is not None
        return found.hex


def test_a_merge_never_brings_a_revoked_entry_back(cas: Any, tmp_path: Path) -> None:
    a = _machine_a(cas)
    c = _other(cas, tmp_path / "c")
    a("clone", str(a.store), str(c.store), "--trusted")
    # C, not knowing of any revocation, puts the bad entry back on its main
    _commit(c.store, {BAD: b"miscompiled kernel", "fcnew": b"c's own"}, "c brings it back")
    a("revoke", BAD, "-m", "poisoned")
    _commit(a.store, {"fanew": b"a's own"}, "a moves on")  # diverged: pull merges
    a("remote", "add", "c", str(c.store), "--trusted")
    done = json.loads(a("--json", "pull", "c", "main").stdout)["integration"]
    assert done["kind"] == "merge" and done["refused_revoked"] and BAD in done["refused_revoked"][0]
    with Store(a.store) as s:
        keys = {k.key for k, _ in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest)}
    assert BAD not in keys and {"fcnew", "fanew", GOOD} <= keys


def test_push_then_clone_over_http_carries_revocations(cas: Any, tmp_path: Path, served: Served) -> None:
    a = _machine_a(cas)
    a("revoke", BAD, "-m", "wrong results")
    with Store(a.store) as s:
        remote = _http(served)
        sync.push(s, remote, [("refs/heads/main", "refs/heads/main")])
        assert remote.list_refs()[revocations.REF] == s.refs.get(revocations.REF)
    with Store(served.store_path) as s:  # what a token holder pushed counts as made there
        assert len(revocations.load(s)) == 1
    with Store.init(tmp_path / "b") as b:
        from cas import remotes_config

        remotes_config.add(b, "origin", served.url)
        remotes_config.set_trusted(b, "origin")
        sync.clone(b, _http(served), remote_name="origin")
        assert {x.raw for x in revocations.load(b).by_blob} == {_blob_of(a.store, BAD)}


def _http(served: Served) -> object:
    from cas.remote.http import HttpRemote

    return HttpRemote(served.url, token=served.write_token)


def test_revocations_of_two_machines_merge_and_push_on(cas: Any, tmp_path: Path) -> None:
    a = _machine_a(cas)
    hub = _other(cas, tmp_path / "hub")
    hub("init")
    a("remote", "add", "origin", str(hub.store), "--trusted")
    a("push", "origin", "main", "--tags")
    b = _other(cas, tmp_path / "b")
    a("clone", str(hub.store), str(b.store), "--trusted")
    a("revoke", BAD, "-m", "a says so")
    b("revoke", GOOD, "-m", "b says so")
    a("push", "origin", "main")
    late = b("push", "origin", "main").stdout  # the hub has a revocation b lacks
    assert "rejected" in late and "fetch, then push again" in late
    b("fetch", "origin")
    b("push", "origin", "main")
    assert _revoked(b.store) == _revoked(hub.store) == {_blob_of(a.store, BAD), _blob_of(a.store, GOOD)}
    with Store(b.store) as s:
        assert LocalRemote(hub.store).list_refs()[revocations.REF] == s.refs.get(revocations.REF)


@pytest.mark.parametrize("how", ["key", "blob"])
def test_revoke_by_key_or_blob_names_the_same_entry(cas: Any, how: str) -> None:
    a = _machine_a(cas)
    bad = _blob_of(a.store, BAD)
    what = BAD if how == "key" else bad.hex()[:16]
    a("revoke", what, "-m", "bad")
    assert _revoked(a.store) == {bad}


def test_a_partial_clone_takes_the_whole_revocation_branch(cas: Any, tmp_path: Path) -> None:
    a = _machine_a(cas)
    a("revoke", BAD, "-m", "poisoned")
    b = _other(cas, tmp_path / "b")
    a("clone", str(a.store), str(b.store), "--trusted", "--env", ENV.id.hex)
    assert _revoked(b.store) == {_blob_of(a.store, BAD)}
    assert "revoked" in b("log", "cas/revocations").stdout
