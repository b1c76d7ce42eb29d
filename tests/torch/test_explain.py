"""``cas explain``: why an entry of the store does or does not apply to this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.store import Store
from cas_cli.main import cli

HERE_KEY = "fhere0000000000000000000000000000000000000000000000"
OTHER_KEY = "fother000000000000000000000000000000000000000000000"
BOTH_KEY = "fboth0000000000000000000000000000000000000000000000"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: one key for this process's env, one only for an env with another torch build
    and thread count, one for both."""
    from cas.torch.env import current_env

    here = current_env()
    other = Env({**here.fields, "torch_key": "0" * 64, "threads": "64"})
    path = tmp_path_factory.mktemp("explain") / "store"
    with Store.init(path) as store:
        store.objects.put_object(here)
        store.objects.put_object(other)
        blob = store.objects.put(b"graph")
        e = Entry(blob, 5, None, {})
        changes = {
            EntryKey(here.id, "inductor", HERE_KEY): e,
            EntryKey(other.id, "inductor", OTHER_KEY): e,
            EntryKey(here.id, "aot_autograd", BOTH_KEY): e,
            EntryKey(other.id, "aot_autograd", BOTH_KEY): e,
        }
        commit_changes(store, "main", changes, "explain fixture")
    return path


def _cas(store: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_a_key_held_for_this_env_applies(store_path: Path) -> None:
    rc, out = _cas(store_path, "explain", HERE_KEY)
    assert rc == 0
    assert out.strip() == f"{HERE_KEY}: applies here (1 entry: inductor)"
    rc, out = _cas(store_path, "explain", BOTH_KEY[:12])  # a prefix is enough
    assert "applies here" in out


def test_a_key_held_only_for_another_env_names_the_fields_that_differ(store_path: Path) -> None:
    rc, out = _cas(store_path, "explain", OTHER_KEY)
    assert rc == 0
    assert "does not apply here" in out
    assert "torch_key: entry has '0000" in out
    assert "threads: entry has '64'" in out
    rc, out = _cas(store_path, "--json", "explain", OTHER_KEY)
    doc = json.loads(out)
    assert doc["status"] == "other-env"
    assert {d["field"] for d in doc["diff"]} == {"torch_key", "threads"}


def test_a_key_not_in_the_ref_says_so(store_path: Path) -> None:
    rc, out = _cas(store_path, "explain", "fnowhere")
    assert rc == 0 and "not in main" in out


def test_explain_current_lists_every_env_and_how_it_differs(store_path: Path) -> None:
    rc, out = _cas(store_path, "--json", "explain", "--current")
    assert rc == 0
    envs = json.loads(out)["envs"]
    # The probe of torch's internals rides along: nothing missing on the installed torch.
    assert json.loads(out)["compat"]["missing"] == [] and json.loads(out)["compat"]["supported"]
    assert [e["matches"] for e in envs] == [True, False]
    assert envs[0]["entries"] == 2 and envs[0]["diff"] == []
    assert {d["field"] for d in envs[1]["diff"]} == {"torch_key", "threads"}
    rc, out = _cas(store_path, "explain", "--current")
    assert "applies here" in out and "does not apply" in out
    assert "torch lacks" not in out and "supported range" not in out  # quiet when all is well


def test_explain_without_a_key_or_an_unknown_ref_is_a_clear_error(store_path: Path) -> None:
    rc, out = _cas(store_path, "explain")
    assert rc == 2 and "give a cache KEY or --current" in out
    rc, out = _cas(store_path, "explain", "--ref", "nope", HERE_KEY)
    assert rc == 3 and "unknown revision 'nope'" in out
