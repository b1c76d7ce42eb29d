"""``cas coverage REF --env current``: will this machine start warm from a pin, and what
will it compile, judged from the store before anything is hydrated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.refs import create_tag
from cas.store import Store
from cas_cli.main import cli

SHARED, ONLY_OTHER = "fshared" + "0" * 45, "fother" + "0" * 46


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three pins: ``warm`` holds a graph (two shape variants) and an AOT entry for this
    process's env; ``mixed`` adds a graph held only for an env with another torch build
    and thread count; ``cold`` holds entries of that other env only."""
    from cas.torch.env import current_env

    here = current_env()
    other = Env({**here.fields, "torch_key": "0" * 64, "threads": "64"})
    path = tmp_path_factory.mktemp("coverage-env") / "store"
    with Store.init(path) as store:
        here_id, other_id = store.objects.put_object(here), store.objects.put_object(other)
        e = Entry(store.objects.put(b"graph"), 5, None, {})
        warm = commit_changes(store, "main", {EntryKey(here_id, "inductor", SHARED, "s0"): e,
                                              EntryKey(here_id, "inductor", SHARED, "s1"): e,
                                              EntryKey(here_id, "aot_autograd", "aot" + SHARED): e}, "here")
        mixed = commit_changes(store, "main", {EntryKey(other_id, "inductor", SHARED): e,
                                               EntryKey(other_id, "inductor", ONLY_OTHER): e}, "other")
        cold = commit_changes(store, "cold", {EntryKey(other_id, "inductor", ONLY_OTHER): e}, "cold")
        for name, oid in (("warm", warm), ("mixed", mixed), ("cold", cold)):
            create_tag(store, name, oid, message=name)
    return path


def _here(store: Path, ref: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["--store", str(store), "--json", "coverage", ref, "--env", "current"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output)["here"])


def test_a_pin_of_this_env_starts_warm(store_path: Path) -> None:
    from cas.torch.env import current_env

    here = _here(store_path, "warm")
    assert here["env"] == current_env().id.hex
    assert here["warm"] == "yes" and here["entries"] == 3 and here["compile"] == {}
    assert here["kinds"] == {"aot_autograd": 1, "inductor": 2}


def test_a_graph_held_only_for_another_env_will_compile_and_says_why(store_path: Path) -> None:
    here = _here(store_path, "mixed")
    assert here["warm"] == "partly" and here["compile"] == {"inductor": 1}
    assert [g["key"] for g in here["graphs"]] == [ONLY_OTHER]
    other = next(e for e in here["envs"] if not e["matches"])
    assert {d["field"] for d in other["diff"]} == {"torch_key", "threads"}
    result = CliRunner().invoke(cli, ["--store", str(store_path), "coverage", "mixed", "--env", "current"],
                                catch_exceptions=False)
    assert "warm start: partly; 3 entries apply" in result.output
    assert "will compile: 1 inductor graph(s) the pin holds only for other envs" in result.output
    assert "does not apply; differs in:" in result.output
    assert "      threads: entry has '64', this machine has" in result.output


def test_a_pin_of_other_envs_only_is_cold_here(store_path: Path) -> None:
    here = _here(store_path, "cold")
    assert here["warm"] == "no" and here["entries"] == 0 and here["compile"] == {"inductor": 1}
