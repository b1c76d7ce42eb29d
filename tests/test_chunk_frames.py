"""A large blob sent as its chunks' zstd frames is stored as those frames, on a server's
receive (cas.ingest.receive) and on a fetch (pack.decode, then ingest.records): nothing
is compressed again, and every frame is still decompressed and hashed, so a damaged or
misplaced one is refused and nothing of its pack is stored."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import zstandard
from servers import Served

from cas import history, ingest, pack
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CasError
from cas.fsck import fsck
from cas.objects import Entry, EntryKey, Env
from cas.remote.http import HttpRemote
from cas.remote.retry import RetryingRemote
from cas.store import CHUNK_SIZE, Store
from cas.sync import transfer

LINE = b"    tmp%d = tl.load(in_ptr0 + (x0 + %d), xmask)\n"


def blob(size: int = 2 * CHUNK_SIZE + 12345) -> bytes:
    rng = random.Random(7)
    text = b"".join(LINE % (i, rng.randrange(10**6)) for i in range(size // 30))
    return text[:size]


def chunk_frames(data: bytes) -> list[bytes]:
    zc = zstandard.ZstdCompressor(level=1)
    return [zc.compress(data[i : i + CHUNK_SIZE]) for i in range(0, len(data), CHUNK_SIZE)]


def sent(data: bytes, frames: list[bytes]) -> bytes:
    obj = pack.Framed(ObjectId.of(data), ObjType.BLOB, data, b"".join(frames), frames=len(frames))
    return pack.encode_bytes([obj], level=None, multi_frame=True)


def stored_frames(store: Store, oid: ObjectId) -> list[bytes | None]:
    got = store.objects.get_many_frames(store.objects.chunk_ids(oid))
    return [got[c][2] for c in store.objects.chunk_ids(oid)]


def test_a_server_keeps_the_chunk_frames_it_was_sent(tmp_path: Path) -> None:
    data = blob()
    frames = chunk_frames(data)
    with Store.init(tmp_path / "s") as store:
        ingest.receive(store, sent(data, frames))
        oid = ObjectId.of(data)
        assert stored_frames(store, oid) == frames
        assert store.objects.get(oid, verify=True) == data


def test_a_fetch_keeps_the_chunk_frames_it_was_sent(tmp_path: Path) -> None:
    data = blob()
    frames = chunk_frames(data)
    objs = pack.decode_all(io.BytesIO(sent(data, frames)))
    with Store.init(tmp_path / "s") as store:
        store.objects.write(ingest.records(objs), encoded=True)
        oid = ObjectId.of(data)
        assert stored_frames(store, oid) == frames
        assert store.objects.get(oid, verify=True) == data


def _damaged(frames: list[bytes]) -> list[bytes]:
    second = bytearray(frames[1])
    second[len(second) // 2] ^= 0xFF
    return [frames[0], bytes(second), *frames[2:]]


@pytest.mark.parametrize("how", ["flipped byte", "frames swapped"])
def test_a_bad_chunk_frame_is_refused_and_nothing_stored(tmp_path: Path, how: str) -> None:
    data = blob(3 * CHUNK_SIZE)  # equal chunks: swapped frames have the right sizes
    frames = chunk_frames(data)
    bad = _damaged(frames) if how == "flipped byte" else [frames[1], frames[0], frames[2]]
    body = sent(data, bad)
    with Store.init(tmp_path / "s") as store:
        with pytest.raises(CasError):
            ingest.receive(store, body)
        with pytest.raises(CasError):
            store.objects.write(ingest.records(pack.decode_all(io.BytesIO(body))), encoded=True)
        assert store.info()["objects"] == 0


def test_frames_of_another_size_are_stored_by_compressing_the_chunks(tmp_path: Path) -> None:
    data = blob()
    zc = zstandard.ZstdCompressor(level=1)
    frames = [zc.compress(data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    assert pack.chunk_split(b"".join(frames), len(data), CHUNK_SIZE) is None
    with Store.init(tmp_path / "s") as store:
        ingest.receive(store, sent(data, frames))
        assert store.objects.get(ObjectId.of(data), verify=True) == data
        assert len(store.objects.chunk_ids(ObjectId.of(data))) == 3


def test_a_fetch_answer_sends_stored_frames_as_they_are(tmp_path: Path) -> None:
    """pack.from_store_frames (what `cas serve` answers a fetch with) sends each object
    the store keeps compressed as its stored frame(s), a chunked blob's chunk frames to a
    reader of several frames, plain ones as they are; decoded, every object is its own
    bytes, verified, and the pack is the one from_store would have made."""
    big = blob()
    small = blob(300_000)
    plain = random.Random(3).randbytes(5000)  # random: stored as it is
    with Store.init(tmp_path / "s") as store:
        ids = store.objects.write([(ObjType.BLOB, big), (ObjType.BLOB, small), (ObjType.BLOB, plain)])
        for multi in (True, False):
            stored = store.objects.stored_frames(ids, multi=multi)
            assert set(stored) == ({ids[0], ids[1]} if multi else {ids[1]})
            assert stored[ids[1]] == (ObjType.BLOB, len(small), store.objects.get_many_frames([ids[1]])[ids[1]][2])
            wire = pack.encode_bytes(pack.from_store_frames(store.objects, ids, multi_frame=multi), multi_frame=multi)
            old = pack.encode_bytes(pack.from_store(store.objects, ids), multi_frame=multi)  # type: ignore[arg-type]
            assert wire == old
            got = pack.decode_all(io.BytesIO(wire))
            assert [(o[0], bytes(o[2])) for o in got] == list(zip(ids, [big, small, plain], strict=True))
        assert store.objects.stored_frames([ids[0]], multi=True)[ids[0]][2] == b"".join(stored_frames(store, ids[0]))  # type: ignore[arg-type]


def test_a_push_sends_stored_frames_as_they_are_through_a_retrying_remote(tmp_path: Path, served: Served) -> None:
    """A push to `cas serve` reads what the store keeps compressed as its stored frames
    (pack.Sized: nothing is decompressed to be sent, cas.remote.base.FrameSender), also
    behind RetryingRemote as `cas push` opens it: the server keeps the same frames,
    a chunked blob's chunk frames included, and every object is intact there."""
    big, small = blob(), blob(300_000)
    plain = random.Random(5).randbytes(5000)
    remote = RetryingRemote(HttpRemote(served.url, token=served.write_token))
    assert remote.takes_stored_frames
    with Store.init(tmp_path / "s") as store:
        ids = store.objects.write([(ObjType.BLOB, big), (ObjType.BLOB, small), (ObjType.BLOB, plain)])
        env = store.objects.put_object(Env({"device": "cpu"}))
        sizes = [len(big), len(small), len(plain)]
        entries = {EntryKey(env, "inductor", f"k{i}"): Entry(oid, n) for i, (oid, n) in enumerate(zip(ids, sizes, strict=True))}
        tip = history.commit_changes(store, "main", entries, "m")  # type: ignore[arg-type]
        transfer.push(store, remote, [("refs/heads/main", "refs/heads/main")])
        remote.close()
        with Store(served.store_path) as there:
            assert there.refs.get("refs/heads/main") == tip
            assert stored_frames(there, ids[0]) == stored_frames(store, ids[0])
            assert there.objects.get_many_frames([ids[1]]) == store.objects.get_many_frames([ids[1]])
            assert [there.objects.get(o, verify=True) for o in ids] == [big, small, plain]
            assert fsck(there).ok
