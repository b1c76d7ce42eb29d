"""The store commands as a user meets them: output, --json, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import blake3

from cas import history
from cas.objects import Entry, EntryKey, Env
from cas.store import Store


def _seed(store_path: Path) -> dict[str, str]:
    """A store with two commits on main (3 entries, then 1 changed + 1 added)."""
    with Store.init(store_path) as s:
        env = s.objects.put_object(Env({"device": "cpu-avx2", "torch_version": "2.13.0"}))
        blobs = [s.objects.put(f"artifact-{i}".encode() * 50) for i in range(5)]
        keys = [EntryKey(env, "inductor", f"fkey{i}") for i in range(4)]
        c1 = history.commit_changes(s, "main", {k: Entry(b, 500) for k, b in zip(keys[:3], blobs[:3], strict=True)}, "first")
        c2 = history.commit_changes(s, "main", {keys[0]: Entry(blobs[3], 500), keys[3]: Entry(blobs[4], 500)}, "second")
        return {"c1": c1.hex, "c2": c2.hex, "env": env.hex}


def test_init_put_cat_roundtrip_agrees_with_b3sum(cas, tmp_path: Path) -> None:
    out = cas("init").stdout
    assert "Initialized empty cas store" in out
    assert "Reinitialized" in cas("init").stdout
    f = tmp_path / "artifact.bin"
    data = b"kernel bytes " * 1000
    f.write_bytes(data)
    line = cas("put", str(f)).stdout.split()
    assert line[0] == blake3.blake3(data).hexdigest()
    got = cas("cat", line[0][:10])
    assert got.stdout.encode() == data
    js = json.loads(cas("--json", "put", str(f)).stdout)
    assert js[0]["id"] == line[0]


def test_missing_store_is_one_line_and_exit_3(cas) -> None:
    proc = cas("log", ok=False)
    assert proc.returncode == 3
    assert proc.stderr.startswith("cas: error: no cas store at")
    assert "Traceback" not in proc.stderr


def test_bad_and_unknown_ids(cas) -> None:
    cas("init")
    unknown = cas("cat", "0123456789abcdef", ok=False)
    assert unknown.returncode == 3 and "unknown revision" in unknown.stderr
    bad = cas("show", "zz-not-a-ref", ok=False)
    assert bad.returncode == 3
    assert "Traceback" not in bad.stderr + unknown.stderr


def test_log_ls_show_diff(cas, store_path: Path) -> None:
    ids = _seed(store_path)
    log = cas("log", "--oneline").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in log] == ["second", "first"]
    entries = json.loads(cas("--json", "ls", "main").stdout)
    assert sorted(e["key"] for e in entries) == ["fkey0", "fkey1", "fkey2", "fkey3"]
    assert len(json.loads(cas("--json", "ls", "main~1").stdout)) == 3
    show = json.loads(cas("--json", "show", ids["c2"][:8]).stdout)
    assert show["message"] == "second" and show["entries"] == 4
    diff = json.loads(cas("--json", "diff", "main~1", "main").stdout)
    assert sorted((d["op"], d["key"]) for d in diff) == [("+", "fkey3"), ("~", "fkey0")]
    env = json.loads(cas("--json", "show", ids["env"]).stdout)
    assert env["fields"]["device"] == "cpu-avx2"


def test_branch_and_tag_commands(cas, store_path: Path) -> None:
    _seed(store_path)
    cas("branch", "exp", "main~1")
    assert "exp" in json.loads(cas("--json", "branch").stdout)
    again = cas("branch", "exp", ok=False)
    assert again.returncode == 4 and "already exists" in again.stderr
    cas("tag", "release/1.0", "main~1", "-m", "first release")
    moved = cas("tag", "release/1.0", "main", ok=False)
    assert moved.returncode == 4 and "never move" in moved.stderr
    assert json.loads(cas("--json", "show", "release/1.0").stdout)["type"] == "tag"
    cas("tag", "release/1.0", "main", "--force")
    refs = json.loads(cas("--json", "refs").stdout)
    assert set(refs) == {"refs/heads/main", "refs/heads/exp", "refs/tags/release/1.0"}
    reflog = json.loads(cas("--json", "refs", "--reflog", "release/1.0").stdout)
    assert len(reflog) == 2


def test_fsck_gc_stats_commands(cas, store_path: Path) -> None:
    _seed(store_path)
    assert "ok" in cas("fsck").stdout
    st = json.loads(cas("--json", "stats").stdout)
    assert st["by_kind"]["inductor"]["count"] == 4
    with Store(store_path) as s:
        s.objects.put(b"unreachable garbage" * 100)
    gc = json.loads(cas("--json", "gc", "--grace", "0").stdout)
    assert gc["objects_freed"] >= 1
    assert "ok" in cas("fsck").stdout


def test_the_lazy_command_table_names_every_command_of_its_module() -> None:
    """`cas` imports a command's module only when it runs; the table that says which
    module holds which command must match what each module registers."""
    import importlib
    import subprocess
    import sys

    import click

    from cas_cli.main import COMMANDS

    for module, names in COMMANDS.items():
        group = click.Group()
        importlib.import_module(f"cas_cli.{module}").register(group)
        assert sorted(group.commands) == sorted(names), module
    # `cas run` loads its own module only: not the server's, sync's or autotune's.
    probe = ("import sys; from cas_cli.main import cli; cli.get_command(None, 'run'); "
             "print(sorted(m for m in sys.modules if m.startswith(('cas_cli.cmd_', 'cas.server', 'cas.sync'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['cas_cli.cmd_torch_run']"
