"""Small builders for sync tests: stores with commits of real entries and blobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cas import history, manifest, refs
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.fsck import fsck
from cas.objects import Entry, EntryKey, Env
from cas.remote.local import LocalRemote
from cas.store import Store

ENV_A = Env({"device": "cpu-avx2", "torch_version": "2.11"})
ENV_B = Env({"device": "NVIDIA H100 sm90", "torch_version": "2.11"})


def new_store(path: Path) -> Store:
    return Store.init(path)


def remote_at(path: Path) -> LocalRemote:
    Store.init(path).close()
    return LocalRemote(path)


def add(
    store: Store,
    name: str,
    n: int = 3,
    *,
    branch: str = "main",
    env: Env = ENV_A,
    kind: str = "inductor",
    size: int = 64,
    meta: dict[str, Any] | None = None,
    random_bytes: bool = False,
) -> ObjectId:
    """Commit ``n`` entries named ``name-i`` on ``branch``; blobs are stored first."""
    env_id = store.objects.put_object(env)
    datas = [
        os.urandom(size) if random_bytes else (f"{name}-{i}:".encode() * size)[:size]
        for i in range(n)
    ]
    blobs = store.objects.write((ObjType.BLOB, d) for d in datas)  # one transaction
    changes: dict[EntryKey, Entry | None] = {
        EntryKey(env_id, kind, f"{name}-{i}"): Entry(blob, len(d), None, meta or {})
        for i, (blob, d) in enumerate(zip(blobs, datas, strict=True))
    }
    return history.commit_changes(store, branch, changes, f"add {name}")


def entries_of(store: Store, rev: str) -> dict[EntryKey, Entry]:
    root = refs.load_commit(store, refs.resolve(store, rev)).manifest
    return dict(manifest.entries(store, root))


def assert_complete(store: Store) -> None:
    """fsck passes: every ref points at a complete commit, every object hashes right."""
    report = fsck(store)
    assert report.ok, [str(f) for f in report.errors]
