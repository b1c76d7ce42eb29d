"""Trust is bound to a remote's identity (URL and server id), never to its name: removing,
re-adding or re-pointing a remote never makes what an untrusted one sent trusted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from servers import Served

from cas import history, provenance, remotes_config, sync
from cas.errors import PolicyError
from cas.objects import Entry, EntryKey, Env
from cas.remote.http import HttpRemote
from cas.store import Store
from cas.trust import check_ref_allowed


def _capture(path: Path, name: str) -> None:
    with Store.init(path) as s:
        env = s.objects.put_object(Env({"device": "cpu"}))
        blob = s.objects.put(name.encode() * 100)
        history.commit_changes(s, "main", {EntryKey(env, "inductor", name): Entry(blob, 400)}, name)


def _allowed(store_path: Path, ref: str = "main") -> bool:
    with Store(store_path) as s:
        try:
            check_ref_allowed(s, ref)
        except PolicyError:
            return False
        return True


def test_a_refusal_names_the_remote_and_its_hint_is_the_way_to_trust_it(
    tmp_path: Path, cas: Any, store_path: Path
) -> None:
    team = tmp_path / "team"
    _capture(team, "fteam")
    cas("clone", str(team), str(store_path), "--name", "team")
    refused = cas("hydrate", "main", "--cache-dir", str(tmp_path / "cache"), ok=False)
    error, hint = refused.stderr.strip().splitlines()
    assert error.startswith("cas: error: main holds commit ")
    assert error.endswith(f"from untrusted remote 'team' ({team}); its artifacts are not handed to torch")
    # the hint's commands, as a user types them, are what trusts it
    assert hint == (f"hint: trust the remote (cas remote remove team, then cas remote add team {team} "
                    "--trusted) or use a tag signed by a trusted key")
    cas("remote", "remove", "team")
    cas("remote", "add", "team", str(team), "--trusted")
    assert _allowed(store_path)


def test_re_adding_a_name_as_trusted_never_trusts_what_an_untrusted_remote_sent(
    tmp_path: Path, cas: Any, store_path: Path
) -> None:
    evil, good = tmp_path / "evil", tmp_path / "good"
    _capture(evil, "fevil")
    _capture(good, "fgood")
    cas("clone", str(evil), str(store_path))
    assert not _allowed(store_path)
    cas("remote", "remove", "origin")
    cas("remote", "add", "origin", str(good), "--trusted")
    assert not _allowed(store_path)  # the commits came from evil, whatever origin names now
    listed = json.loads(cas("--json", "remote", "list").stdout)
    assert listed[0]["trusted"] and "--trusted given as origin" in listed[0]["trust"]
    # the same name back at evil, untrusted: still refused, and listed so
    cas("remote", "remove", "origin")
    cas("remote", "add", "origin", str(evil))
    assert not _allowed(store_path)
    assert "untrusted" in cas("remote", "list").stdout
    # trust given to evil's own identity is what allows them (the other way round)
    cas("remote", "remove", "origin")
    cas("remote", "add", "evil", str(evil), "--trusted")
    assert _allowed(store_path)
    assert "evil  trusted" in cas("remote", "list").stdout


def test_trust_is_pinned_to_the_server_id(tmp_path: Path, store_path: Path) -> None:
    _capture(tmp_path / "src", "fserved")
    served = Served(tmp_path)
    try:
        with Store(served.store_path) as s, Store(tmp_path / "src") as src:
            sync.push(src, _open(served), [("refs/heads/main", "refs/heads/main")])
            sid = s.meta.get("store.id")
        assert sid
        with Store.init(store_path) as local:
            remotes_config.add(local, "team", served.url)
            remotes_config.set_trusted(local, "team")
            remote = _open(served)
            sync.pull(local, remote, remote_name="team", branch="main")
            assert provenance.origin(local, local.refs.get("refs/heads/main")) == f"remote:{served.url}#{sid}"
            assert check_ref_allowed(local, "main").reason == "trusted-remote"
            # another server behind the same URL (a different store id): not trusted
            c = local.refs.get("refs/heads/main")
            local.meta.set(f"origin.{c.hex}", f"remote:{provenance.identity(served.url, 'ab' * 16)}")
            with pytest.raises(PolicyError):
                check_ref_allowed(local, "main")
    finally:
        served.stop()


def _open(served: Served) -> HttpRemote:
    return HttpRemote(served.url, token=served.write_token)
