"""The remote commands as a user runs them: real processes, real stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cas.store import Store

RUN = "import sys; from cas_cli.main import main; sys.argv[0] = 'cas'; main()"


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.env = dict(os.environ, CAS_AUTHOR="tester@example", XDG_CACHE_HOME=str(tmp / "xdg"))
        self.env.pop("CAS_DIR", None)

    def __call__(self, store: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-c", RUN, "--store", str(store), *args],
            capture_output=True, text=True, env=self.env, timeout=120,
        )
        assert proc.returncode == code, f"cas {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def _commit(cli: Cli, store: Path, tmp: Path, name: str) -> None:
    """Make a commit through the library (capture needs torch; this is about sync)."""
    from cas import history
    from cas.objects import Entry, EntryKey, Env
    from cas.store import Store

    with Store.init(store) as s:
        env = s.objects.put_object(Env({"device": "cpu"}))
        blob = s.objects.put(name.encode() * 100)
        history.commit_changes(s, "main", {EntryKey(env, "inductor", name): Entry(blob, 100 * len(name))}, name)


def test_remote_add_list_remove(cli: Cli, tmp_path: Path) -> None:
    a = tmp_path / "a"
    cli(a, "init")
    cli(a, "remote", "add", "origin", str(tmp_path / "r"))
    cli(a, "remote", "add", "bucket", "s3://b/p", "-o", "endpoint=http://127.0.0.1:1")
    out = cli(a, "--json", "remote", "list").stdout
    listed = {r["name"]: r for r in json.loads(out)}
    assert listed["bucket"]["kind"] == "s3" and listed["bucket"]["options"] == {"endpoint": "http://127.0.0.1:1"}
    assert listed["origin"]["kind"] == "path"
    assert "bucket  s3://b/p endpoint=http://127.0.0.1:1" in cli(a, "remote", "list", "-v").stdout
    err = cli(a, "remote", "add", "origin", "/elsewhere", code=2).stderr
    assert "remote origin already exists" in err
    cli(a, "remote", "remove", "bucket")
    assert cli(a, "remote", "list").stdout.split() == ["origin", "untrusted"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("remote", "add", "x", "ftp://h/p"), 2, "unsupported remote url"),
        (("remote", "add", "bad name", "/p"), 2, "invalid remote name"),
        (("push", "nosuch"), 3, "no remote named 'nosuch'"),
        (("remote", "remove", "nosuch"), 3, "no remote named"),
        (("fetch", "/definitely/not/a/store"), 8, "no cas store at /definitely/not/a/store"),
        (("fetch", "http://127.0.0.1:9"), 8, ""),
    ],
)
def test_errors_are_one_clear_line(cli: Cli, tmp_path: Path, args: tuple[str, ...], code: int, message: str) -> None:
    a = tmp_path / "a"
    Store.init(a).close()  # `cas init` itself is tested elsewhere; the error is the point here
    err = cli(a, *args, code=code).stderr
    assert err.startswith("cas: error: ") and message in err
    assert "Traceback" not in err


def test_push_clone_pull_round_trip(cli: Cli, tmp_path: Path) -> None:
    a, b, r = tmp_path / "a", tmp_path / "b", tmp_path / "r"
    cli(r, "init")
    _commit(cli, a, tmp_path, "first")
    cli(a, "remote", "add", "origin", str(r))
    out = cli(a, "push").stdout
    assert "pushed" in out and "main:" in out and "[new]" in out and "/s)" in out
    cloned = json.loads(cli(b, "--json", "clone", str(r)).stdout)
    assert cloned["objects"] > 0 and cloned["bytes_per_second"] >= 0
    _commit(cli, a, tmp_path, "second")
    cli(a, "-q", "push")
    out = cli(b, "pull").stdout
    assert "main: fast-forward" in out
    assert "second" in cli(b, "log").stdout
    # Nothing new, then a non-fast-forward refused with a hint.
    assert "up-to-date" in cli(a, "push").stdout
    _commit(cli, b, tmp_path, "theirs")
    cli(b, "push")
    _commit(cli, a, tmp_path, "mine")
    err = cli(a, "push", code=4).stderr
    assert "rejected" in err and "pull first" in err
    out = cli(a, "pull").stdout
    assert "main: merge" in out
    cli(a, "push")
    assert "other: (none) -> " in cli(a, "push", "origin", "main:other").stdout


def test_clone_and_pull_env_current_fetch_only_this_machines_entries(cli: Cli, tmp_path: Path) -> None:
    from cas import history
    from cas.digest import ObjectId
    from cas.objects import Entry, EntryKey, Env
    from cas.store import Store
    from cas.torch.env import current_env

    here = current_env()
    other = Env({"device": "NVIDIA B200 sm100", "torch_version": "9.9"})
    origin = tmp_path / "origin"
    with Store.init(origin) as s:
        changes: dict[EntryKey, Entry | None] = {}
        for env, name in ((here, "mine"), (other, "theirs")):
            env_id = s.objects.put_object(env)
            for i in range(3):
                data = f"{name}-{i}".encode() * 500
                changes[EntryKey(env_id, "inductor", f"{name}-{i}")] = Entry(s.objects.put(data), len(data))
        history.commit_changes(s, "main", changes, "two envs")
    local = tmp_path / "local"
    out = json.loads(cli(local, "--json", "clone", str(origin), "--env", "current").stdout)
    assert out["updates"][0]["status"] == "partial"
    listed = cli(local, "--json", "ls").stdout
    keys = sorted(e["key"] for e in json.loads(listed))
    assert keys == ["mine-0", "mine-1", "mine-2"]
    # An explicit env id works the same way, and nothing new is reported as up to date.
    out = cli(local, "pull", "--env", str(here.id)).stdout
    assert "main: up-to-date" in out
    from .helpers import assert_complete

    with Store(local) as s:
        assert_complete(s)
        theirs = [ObjectId.of(f"theirs-{i}".encode() * 500) for i in range(3)]
        assert s.objects.missing(theirs) == theirs  # the other env's artifacts never travelled


def test_push_and_clone_over_cas_serve_with_tokens_from_the_environment(cli: Cli, tmp_path: Path) -> None:
    from servers import Served

    served = Served(tmp_path / "srv")
    try:
        a, b = tmp_path / "a", tmp_path / "b"
        _commit(cli, a, tmp_path, "served")
        cli(a, "remote", "add", "origin", served.url, "-o", "token_env=TEAM_TOKEN")
        err = cli(a, "push", code=9).stderr  # no token in the environment yet
        assert err.startswith("cas: error: ") and "Traceback" not in err
        cli.env["TEAM_TOKEN"] = served.write_token
        assert "[new]" in cli(a, "push").stdout
        cli.env["CAS_TOKEN"] = served.read_token  # the default variable, read scope
        cloned = json.loads(cli(b, "--json", "clone", served.url).stdout)
        assert cloned["updates"][0]["status"] == "new"
        assert "served" in cli(b, "log").stdout
        _commit(cli, b, tmp_path, "reader-change")
        err = cli(b, "push", code=9).stderr  # a read token cannot push
        assert "cas: error:" in err
    finally:
        served.stop()


def test_push_all_and_tags(cli: Cli, tmp_path: Path) -> None:
    from cas import refs
    from cas.store import Store

    a, r = tmp_path / "a", tmp_path / "r"
    cli(r, "init")
    _commit(cli, a, tmp_path, "tagged")
    with Store(a) as s:
        tip = s.refs.get("refs/heads/main")
        refs.set_branch(s, "feature", tip)
        refs.create_tag(s, "release/1.4", tip, message="the release")
    cli(a, "remote", "add", "origin", str(r))
    out = json.loads(cli(a, "--json", "push", "--all", "--tags").stdout)
    assert sorted(u["ref"] for u in out["updates"]) == [
        "refs/heads/feature", "refs/heads/main", "refs/tags/release/1.4"]
    with Store(r) as s:
        assert s.refs.get("refs/heads/feature") == tip
        assert refs.resolve(s, "release/1.4") == tip
    err = cli(a, "push", "origin", "nosuch", code=2).stderr
    assert "no local branch or tag 'nosuch'" in err


def test_a_clone_that_cannot_sync_its_new_store_fails_and_leaves_nothing(cli: Cli, tmp_path: Path) -> None:
    """A new store's commits are flushed once, before the clone says it is done
    (docs/sync.md, "Resume"): a flush that fails (a fault, as a full or failing disk
    gives) is one clear error, and the half-durable store is removed, not reported."""
    a, r, b = tmp_path / "a", tmp_path / "r", tmp_path / "b"
    cli(r, "init")
    _commit(cli, a, tmp_path, "first")
    cli(a, "remote", "add", "origin", str(r))
    cli(a, "-q", "push")
    fault = (
        "import cas.store.env as e\n"
        "from cas.errors import StoreFull\n"
        "def sync(self): raise StoreFull('no space left on the disk holding the store at ' + self.key)\n"
        "e.Env.sync = sync\n"
    )
    proc = subprocess.run([sys.executable, "-c", fault + RUN, "clone", str(r), str(b)],
                          capture_output=True, text=True, env=cli.env, timeout=120)
    assert proc.returncode != 0 and proc.stderr.startswith("cas: error: no space left"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not b.exists()
    cli(tmp_path / "c", "clone", str(r))  # without the fault: cloned, and it holds the commit
    assert "first" in cli(tmp_path / "c", "log").stdout
