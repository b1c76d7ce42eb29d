"""Provenance and the trust policy across a real push and fetch (path remote)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas import history, remotes_config, sync
from cas.errors import PolicyError
from cas.objects import Entry, EntryKey, Env
from cas.remote import open_remote
from cas.store import Store
from cas.trust import check_ref_allowed


def _capture(store: Store, name: str) -> None:
    env = store.objects.put_object(Env({"device": "cpu"}))
    blob = store.objects.put(name.encode() * 100)
    history.commit_changes(store, "main", {EntryKey(env, "inductor", name): Entry(blob, 400)}, name)


def test_own_commits_stay_trusted_after_a_push_and_fetch(tmp_path: Path) -> None:
    with Store.init(tmp_path / "a") as a, Store.init(tmp_path / "remote") as _:
        _capture(a, "fkey-local")
        remotes_config.add(a, "origin", str(tmp_path / "remote"))
        remote = open_remote(str(tmp_path / "remote"))
        sync.push(a, remote, [("refs/heads/main", "refs/heads/main")], remote_name="origin")
        sync.fetch(a, remote, remote_name="origin")
        assert check_ref_allowed(a, "main").reason == "local"
        remote.close()


def test_pulled_commits_reach_torch_only_from_a_trusted_remote(tmp_path: Path) -> None:
    with Store.init(tmp_path / "a") as a, Store.init(tmp_path / "b") as b:
        _capture(a, "fkey-from-a")
        remotes_config.add(b, "origin", str(tmp_path / "a"))
        remote = open_remote(str(tmp_path / "a"))
        sync.pull(b, remote, remote_name="origin", branch="main")
        with pytest.raises(PolicyError, match="untrusted remote"):
            check_ref_allowed(b, "main")
        remotes_config.set_trusted(b, "origin")
        assert check_ref_allowed(b, "main").reason == "trusted-remote"
        # a local commit on top of pulled ones still carries the pulled entries
        remotes_config.set_trusted(b, "origin", False)
        _capture(b, "fkey-local-on-top")
        with pytest.raises(PolicyError):
            check_ref_allowed(b, "main")
        remote.close()
