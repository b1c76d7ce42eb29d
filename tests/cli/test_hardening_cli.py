"""The small hardening fixes, as a user meets them: init refuses a non-empty non-store
dir; git's branch-name rules; a cut clone resumes and ends with the branch set; a failed
clone leaves nothing behind; `cas serve` fails before claiming success; read commands
verify what they decode."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cas import history, sync
from cas.objects import Entry, EntryKey, Env
from cas.remote.faults import FaultyRemote
from cas.remote.local import LocalRemote
from cas.store import Store
from cas.sync.transfer import CLONE_PENDING


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("cas: error:"), proc.stderr
    return first


def test_init_refuses_a_non_empty_directory_that_is_not_a_store(cas: Any, tmp_path: Path) -> None:
    victim = tmp_path / "etc"
    victim.mkdir()
    (victim / "passwd").write_text("root:x:0:0\n")
    proc = cas("--store", str(victim), "init", ok=False)
    assert "not empty" in _one_line_error(proc, 2)
    assert sorted(p.name for p in victim.iterdir()) == ["passwd"]
    cas("init", str(tmp_path / "new"))  # a new dir, an empty dir and a store are fine
    (tmp_path / "empty").mkdir()
    cas("init", str(tmp_path / "empty"))
    cas("init", str(tmp_path / "new"))


@pytest.mark.parametrize("name", ["HEAD", "-x", "@", "a..b", "x.lock", "a/.b", "a b"])
def test_branch_names_follow_gits_rules(cas: Any, name: str) -> None:
    Store.init(cas.store).close()  # `cas init` is tested above; the branch name is the point
    proc = cas("branch", "--", name, ok=False)
    assert "invalid branch name" in _one_line_error(proc, 2) or "invalid ref name" in proc.stderr


def _source(path: Path) -> None:
    with Store.init(path) as s:
        env = s.objects.put_object(Env({"device": "cpu"}))
        changes = {EntryKey(env, "inductor", f"k{i}"): Entry(s.objects.put(b"%d" % i * 999), 999 * len(b"%d" % i))
                   for i in range(20)}
        history.commit_changes(s, "main", changes, "c")


def test_a_cut_clone_is_finished_by_fetch_or_by_cloning_again(tmp_path: Path) -> None:
    _source(tmp_path / "src")
    for finish in ("fetch", "clone"):
        with Store.init(tmp_path / finish) as store:
            remote = LocalRemote(tmp_path / "src")
            with pytest.raises(Exception, match="dropped"):
                sync.clone(store, FaultyRemote(remote, drop_after_fetches=1), url=str(tmp_path / "src"))
            assert store.refs.get("refs/heads/main") is None
            if finish == "fetch":
                sync.fetch(store, remote, remote_name="origin")
            else:
                sync.clone(store, remote, url=str(tmp_path / "src"))
            assert store.refs.get("refs/heads/main") is not None
            assert store.meta.get(CLONE_PENDING) is None


def test_a_clone_cut_after_its_tracking_refs_resumes(tmp_path: Path) -> None:
    _source(tmp_path / "src")
    with Store.init(tmp_path / "dst") as store:
        remote = LocalRemote(tmp_path / "src")
        # the state a clone killed between its tracking refs and its branches leaves
        store.meta.set(CLONE_PENDING, "origin")
        sync.fetch(store, FaultyRemote(remote), remote_name="elsewhere")
        store.refs.set("refs/remotes/origin/main", store.refs.get("refs/remotes/elsewhere/main"))
        sync.clone(store, remote, url=str(tmp_path / "src"))
        assert store.refs.get("refs/heads/main") == store.refs.get("refs/remotes/origin/main")


def test_a_failed_clone_leaves_nothing_behind(cas: Any, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    proc = cas("clone", "http://127.0.0.1:9", str(dest), ok=False)
    _one_line_error(proc, 8)
    assert not dest.exists()
    (tmp_path / "empty").mkdir()
    cas("clone", str(tmp_path / "no-such-store"), str(tmp_path / "empty"), ok=False)
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("door", ["--port", "--redis-port"])
def test_serve_on_a_busy_port_fails_before_claiming_to_serve(cas: Any, tmp_path: Path, door: str) -> None:
    cas("init")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--port": "0", "--redis-port": "0", door: str(port)}
        proc = cas("serve", "--no-auth", *(x for kv in ports.items() for x in kv), ok=False, timeout=60)
    assert f"cannot listen on 127.0.0.1:{port} ({door})" in _one_line_error(proc, 2)
    assert "serving" not in proc.stdout + proc.stderr


def test_read_commands_verify_what_they_decode(cas: Any, store_path: Path) -> None:
    _source(store_path)
    cas("ls", "main")
    data = store_path / "data.mdb"
    raw = data.read_bytes()
    # damage the manifest leaf's bytes where they lie on disk (copy-on-write may have left
    # stale copies of its page too: damage every one)
    assert raw.count(b"k19") >= 1
    data.write_bytes(raw.replace(b"k19", b"k99"))
    proc = cas("ls", "main", ok=False)
    assert "corrupt" in _one_line_error(proc, 5)
