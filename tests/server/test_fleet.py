"""A fleet of new machines cloning one pin at once from one `cas serve`.

Eight empty stores clone the same tagged pin through one server concurrently (identical
wants arriving together): every one ends with the whole pin, byte for byte, fsck clean,
and the server still answers afterwards. The speed of this is bench/bench_fleet.py's job.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from servers import Served

from cas import history, manifest, refs
from cas.digest import ObjectId
from cas.fsck import fsck
from cas.objects import Entry, EntryKey, Env
from cas.remote.http import HttpRemote
from cas.store import Store
from cas.sync import transfer

MACHINES = 8
TAG = "release/fleet"


def _pin(store: Store) -> dict[EntryKey, Entry]:
    """A small pin: a header, kernels and entries of mixed sizes, committed and tagged."""
    rng = random.Random(20)
    env_id = store.objects.put_object(Env({"device": "cpu", "torch_version": "fleet-test"}))
    sizes = [("cpp_pch", 3 << 20)] + [("cpp_kernel", rng.randint(64 << 10, 1 << 20)) for _ in range(6)]
    sizes += [("inductor", rng.randint(1 << 10, 64 << 10)) for _ in range(60)]
    changes: dict[EntryKey, Entry | None] = {}
    for i, (kind, size) in enumerate(sizes):
        data = rng.randbytes(size // 2) + b"tl.load(in_ptr0 + x0)\n" * (size // 44)
        oid = store.objects.put(data)
        changes[EntryKey(env_id, kind, f"key{i:03d}")] = Entry(oid, len(data))
    commit = history.commit_changes(store, "main", changes, "fleet pin")
    refs.create_tag(store, TAG, commit, message="the pin")
    return {k: v for k, v in changes.items() if v is not None}


def _clone(url: str, token: str, path: Path) -> ObjectId:
    remote = HttpRemote(url, token=token)
    try:
        with Store.init(path) as store:
            transfer.clone(store, remote, url=url)
            tag = store.refs.get(refs.tag_ref(TAG))
            assert tag is not None
            return tag
    finally:
        remote.close()


def test_machines_cloning_one_pin_at_once_all_get_it_whole(served: Served, tmp_path: Path) -> None:
    with Store.init(tmp_path / "release") as src:
        pinned = _pin(src)
        pusher = HttpRemote(served.url, token=served.write_token)
        transfer.push(src, pusher, [("refs/heads/main", "refs/heads/main"), (refs.tag_ref(TAG), refs.tag_ref(TAG))])
        pusher.close()
        want = src.refs.get(refs.tag_ref(TAG))
        blobs = {e.blob: src.objects.get(e.blob) for e in pinned.values()}

    paths = [tmp_path / f"machine{i}" for i in range(MACHINES)]
    with ThreadPoolExecutor(MACHINES) as pool:
        tags = list(pool.map(lambda p: _clone(served.url, served.read_token, p), paths))

    assert tags == [want] * MACHINES
    for path in paths:
        with Store(path) as store:
            assert not fsck(store).errors
            commit = refs.load_commit(store, refs.resolve(store, refs.tag_ref(TAG)))
            got = dict(manifest.entries(store, commit.manifest))
            assert got == pinned
            assert all(store.objects.get(oid) == data for oid, data in blobs.items())
    assert httpx.get(served.url + "/v1/health", timeout=30).status_code == 200
