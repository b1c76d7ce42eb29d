"""Partial pulls: a machine fetches only the entries of the envs it can use."""

from __future__ import annotations

from pathlib import Path

from cas import refs, sync
from cas.remote.faults import CountingRemote
from cas.remote.local import LocalRemote

from .helpers import ENV_A, ENV_B, add, assert_complete, entries_of, new_store


def test_partial_clone_and_pull_fetch_only_the_chosen_envs(tmp_path: Path) -> None:
    origin = new_store(tmp_path / "origin")
    add(origin, "cpu", 5, env=ENV_A, size=1000)
    tip = add(origin, "gpu", 7, env=ENV_B, size=50_000)
    gpu_blobs = {e.blob for k, e in entries_of(origin, "main").items() if k.env == ENV_B.id}
    remote = CountingRemote(LocalRemote(tmp_path / "origin"))

    local = new_store(tmp_path / "local")
    res = sync.clone(local, remote, envs={ENV_A.id})
    got = entries_of(local, "main")
    assert len(got) == 5 and {k.env for k in got} == {ENV_A.id}
    assert not any(local.objects.has(b) for b in gpu_blobs)
    assert remote.fetched_bytes < 50_000  # no gpu artifact travelled
    head = refs.load_commit(local, local.refs.get("refs/heads/main"))
    assert head.metadata["partial_of"] == str(tip)
    assert head.metadata["envs"] == [str(ENV_A.id)]
    assert local.refs.get("refs/remotes/origin/main") == local.refs.get("refs/heads/main")
    assert res.tips["refs/heads/main"] == local.refs.get("refs/heads/main")
    assert_complete(local)

    # Nothing new: one request.
    remote.calls.clear()
    _, done = sync.pull(local, remote, branch="main", remote_name="origin", envs={ENV_A.id})
    assert done.kind == "up-to-date" and remote.requests <= 2

    # New entries of both envs upstream: only the cpu ones come.
    add(origin, "cpu2", 2, env=ENV_A, size=1000)
    add(origin, "gpu2", 2, env=ENV_B, size=50_000)
    remote.fetched_bytes = 0
    _, done = sync.pull(local, remote, branch="main", remote_name="origin", envs={ENV_A.id})
    assert done.kind == "fast-forward"
    assert len(entries_of(local, "main")) == 7
    assert remote.fetched_bytes < 50_000
    assert_complete(local)
    origin.close()
    local.close()


def test_partial_pull_with_both_envs_matches_the_full_manifest(tmp_path: Path) -> None:
    origin = new_store(tmp_path / "origin")
    add(origin, "cpu", 3, env=ENV_A)
    add(origin, "gpu", 3, env=ENV_B)
    local = new_store(tmp_path / "local")
    sync.clone(local, LocalRemote(tmp_path / "origin"), envs={ENV_A.id, ENV_B.id})
    assert entries_of(local, "main") == entries_of(origin, "main")
    origin.close()
    local.close()


def test_partial_pull_after_a_full_one_keeps_the_full_entries(tmp_path: Path) -> None:
    origin = new_store(tmp_path / "origin")
    add(origin, "cpu", 2, env=ENV_A)
    add(origin, "gpu", 2, env=ENV_B)
    local = new_store(tmp_path / "local")
    remote = LocalRemote(tmp_path / "origin")
    sync.clone(local, remote)
    add(origin, "cpu2", 1, env=ENV_A)
    _, done = sync.pull(local, remote, branch="main", remote_name="origin", envs={ENV_A.id})
    # The partial commit is not a child of the full one: the pull merges, keeping both.
    partial = refs.load_commit(local, local.refs.get("refs/remotes/origin/main"))
    assert partial.parents == () and "partial_of" in partial.metadata
    assert done.kind == "merge"
    assert {k.key for k in entries_of(local, "main")} == {"cpu-0", "cpu-1", "gpu-0", "gpu-1", "cpu2-0"}
    assert_complete(local)
    origin.close()
    local.close()


def test_partial_pull_for_a_cpu_leaves_other_cpus_headers_on_the_remote(tmp_path: Path) -> None:
    import os

    from cas import history
    from cas.codec import ObjType
    from cas.objects import Entry, EntryKey

    origin = new_store(tmp_path / "origin")
    env_id = origin.objects.put_object(ENV_A)
    headers = {cpu: os.urandom(40_000) for cpu in ("cpu-aaaa", "cpu-bbbb")}
    blobs = dict(zip(headers, origin.objects.write((ObjType.BLOB, d) for d in headers.values()), strict=True))
    changes: dict[EntryKey, Entry | None] = {
        EntryKey(env_id, "cpp_pch", "h1.h.gch", cpu): Entry(blobs[cpu], len(d), None, {})
        for cpu, d in headers.items()
    }
    history.commit_changes(origin, "main", changes, "headers for two CPUs")
    add(origin, "graph", 2, env=ENV_A)  # not CPU-bound: always comes
    remote = CountingRemote(LocalRemote(tmp_path / "origin"))
    local = new_store(tmp_path / "local")
    sync.clone(local, remote, envs={ENV_A.id}, cpu_variant="cpu-aaaa")
    got = entries_of(local, "main")
    assert {k.variant for k in got if k.kind == "cpp_pch"} == {"cpu-aaaa"}
    assert sum(1 for k in got if k.kind == "inductor") == 2
    assert not local.objects.has(blobs["cpu-bbbb"]) and remote.fetched_bytes < 80_000
    assert_complete(local)
    origin.close()
    local.close()
