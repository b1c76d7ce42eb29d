"""The env of the running process: fields, caching, what changes it, and diffs."""

from __future__ import annotations

import re

import pytest

from cas.objects import Env
from cas.store import Store
from cas.torch.env import cpu_fingerprint, current_env, ensure_env, env_diff


@pytest.fixture(scope="module")
def torch_mod():  # type: ignore[no-untyped-def]
    import torch

    return torch


def test_current_env_describes_this_process(torch_mod) -> None:  # type: ignore[no-untyped-def]
    from torch._inductor.codecache import torch_key

    f = current_env().fields
    assert f["torch_key"] == torch_key().hex() and re.fullmatch(r"[0-9a-f]{64}", f["torch_key"])
    assert f["torch_version"] == torch_mod.__version__
    assert f["device"] == "cpu" and f["cpu_isa"] and f["threads"] == str(torch_mod.get_num_threads())
    assert f["python"].count(".") == 2 and f["machine"] and f["platform"]
    assert f["cache_key_tag"] == ""
    assert current_env() is current_env()  # computed once


def test_thread_count_and_cache_key_tag_change_the_env(torch_mod) -> None:  # type: ignore[no-untyped-def]
    base = current_env()
    threads = torch_mod.get_num_threads()
    torch_mod.set_num_threads(threads + 1)
    try:
        more = current_env()
    finally:
        torch_mod.set_num_threads(threads)
    assert more.id != base.id
    assert env_diff(base, more) == [("threads", str(threads), str(threads + 1))]
    torch_mod.compiler.config.cache_key_tag = "release-1.2"
    try:
        tagged = current_env()
    finally:
        torch_mod.compiler.config.cache_key_tag = ""
    assert env_diff(base, tagged) == [("cache_key_tag", "", "release-1.2")]
    assert current_env().id == base.id


def test_ensure_env_stores_the_env_once(torch_mod, store: Store) -> None:  # type: ignore[no-untyped-def]
    oid = ensure_env(store)
    assert ensure_env(store) == oid == current_env().id
    data = store.objects.get(oid)
    assert data is not None and Env.decode(data) == current_env()


def test_env_diff_lists_changed_added_and_missing_fields() -> None:
    a = Env({"torch_key": "aa", "device": "cpu", "threads": "2"})
    b = Env({"torch_key": "bb", "device": "cpu", "gpu": "H100"})
    assert env_diff(a, b) == [("gpu", None, "H100"), ("threads", "2", None), ("torch_key", "aa", "bb")]
    assert env_diff(a, a) == []


def test_cpu_fingerprint_is_stable_and_short() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", cpu_fingerprint())
    assert cpu_fingerprint() == cpu_fingerprint()
