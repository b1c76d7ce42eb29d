"""The server's pack ingest in-process: compressed frames stored as sent, group commit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zstandard

from cas import pack
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CorruptObject, MalformedPack
from cas.ingest import Commits, Verified, verify, write_group
from cas.objects import Commit, Entry, EntryKey, Env, ManifestNode
from cas.server.app import ingest
from cas.store import Store, records


def _encoded(otype: ObjType, data: bytes) -> records.Encoded:
    return ObjectId.of(data), otype, records.encode(otype, data)


def framed(data: bytes) -> pack.Framed:
    return pack.Framed(ObjectId.of(data), ObjType.BLOB, data, zstandard.compress(data, 3))


def test_a_compressed_frame_is_verified_then_stored_as_sent(tmp_path: Path) -> None:
    data = b"kernel line\n" * 4000
    obj = framed(data)
    with Store.init(tmp_path / "s") as store:
        ingest(store, pack.encode_bytes([obj], level=None))  # the frame travels anyway
        assert store.objects.get_many_frames([obj[0]])[obj[0]][2] == obj.frame
        assert store.objects.get(obj[0], verify=True) == data


def test_a_frame_of_other_bytes_is_rejected_and_nothing_stored(tmp_path: Path) -> None:
    data = b"kernel line\n" * 4000
    lie = pack.Framed(ObjectId.of(data), ObjType.BLOB, data, zstandard.compress(data[:-1] + b"!"))
    with Store.init(tmp_path / "s") as store:
        with pytest.raises(CorruptObject):
            ingest(store, pack.encode_bytes([lie]))
        assert not store.objects.has(lie[0])


def test_a_group_commit_keeps_each_pack_all_or_nothing(tmp_path: Path) -> None:
    with Store.init(tmp_path / "s") as store:
        good, later = b"good" * 1000, b"later" * 1000
        orphan = Commit(ObjectId.of(b"no such manifest"), (), "t", 0, "orphan", {}).encode()
        packs = [
            Verified([], [], [_encoded(ObjType.BLOB, good)]),
            verify(pack.encode_bytes([(ObjectId.of(orphan), ObjType.COMMIT, orphan)])),
            Verified([], [], [_encoded(ObjType.BLOB, later)]),
        ]
        write_group(store, packs)
        assert all(p.done for p in packs)
        assert packs[0].error is None and packs[2].error is None
        assert isinstance(packs[1].error, MalformedPack)
        assert store.objects.has(ObjectId.of(good)) and store.objects.has(ObjectId.of(later))
        assert not store.objects.has(ObjectId.of(orphan))


def test_concurrent_ingests_all_land(tmp_path: Path) -> None:
    commits = Commits()
    blobs = [b"%d " % i * (500 + i) for i in range(24)]
    with Store.init(tmp_path / "s") as store:

        def send(i: int) -> None:
            ingest(store, pack.encode_bytes([framed(blobs[i])], level=None), commits)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(blobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.objects.missing([ObjectId.of(b) for b in blobs]) == []


def test_an_id_that_is_both_an_entry_blob_and_its_env_may_be_either(tmp_path: Path) -> None:
    """An env's bytes stored as a blob too (`cas put` of an env's encoding): the same id,
    stored once, is that leaf's env and blob, as a fetch accepts (docs/format.md)."""
    env = Env({"device": "cpu"}).encode()
    leaf = ManifestNode(0, 1, entries=((EntryKey(ObjectId.of(env), "inductor", "k1"),
                                        Entry(ObjectId.of(env), len(env))),)).encode()
    with Store.init(tmp_path / "s") as store:
        ingest(store, pack.encode_bytes([(ObjectId.of(env), ObjType.ENV, env),
                                         (ObjectId.of(leaf), ObjType.NODE, leaf)]))
        assert store.objects.missing([ObjectId.of(leaf)]) == []
