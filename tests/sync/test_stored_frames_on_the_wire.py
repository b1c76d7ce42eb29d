"""What a header-like blob costs on the wire through `cas serve` on loopback.

Loopback HTTP sends packs raw (zstd would only cost CPU there), but objects a store holds
compressed go as their stored zstd frames both ways, and a chunked blob (a precompiled
header is ~150 MB, stored as 4 MiB chunks) as its chunks' frames: nobody compresses
anything again, and the bytes on the wire are the stored ones. Counted from the pack
bodies each side sent or received, never from time.
"""

from __future__ import annotations

from pathlib import Path

from servers import Served

from cas import history, sync
from cas.codec import ObjType
from cas.objects import Entry, EntryKey
from cas.remote.http import FRAMES_HEADER, HttpRemote
from cas.store import CHUNK_THRESHOLD, Store

from .helpers import ENV_A, assert_complete, entries_of, new_store

MAIN = [("refs/heads/main", "refs/heads/main")]


def _header_like(n_lines: int) -> bytes:
    """Text that zstd shrinks a few times, not a thousand (like a C++ header's bytes)."""
    return b"".join(b"static inline long f%d(long x) { return x * %d + %d; }\n" % (i, i * 7919 % 10007, i % 13)
                    for i in range(n_lines))


def _commit_header(store: Store, data: bytes) -> None:
    env_id = store.objects.put_object(ENV_A)
    blob = store.objects.put(data)
    history.commit_changes(store, "main", {EntryKey(env_id, "cpp_pch", "h" * 16): Entry(blob, len(data))}, "pch")


def test_a_chunked_header_travels_as_its_stored_frames_both_ways(served: Served, tmp_path: Path) -> None:
    data = _header_like(200_000)
    assert len(data) > 2 * CHUNK_THRESHOLD  # several chunks
    a = new_store(tmp_path / "a")
    _commit_header(a, data)
    blob = next(iter(entries_of(a, "main").values())).blob
    assert a.objects.chunk_ids(blob)
    pusher = HttpRemote(served.url, token=served.write_token)
    assert pusher.compress_level is None  # loopback: the client compresses nothing itself
    sync.push(a, pusher, MAIN)
    assert pusher.bytes_sent < len(data) / 3

    b = new_store(tmp_path / "b")
    cloner = HttpRemote(served.url, token=served.read_token)
    sync.clone(b, cloner)
    assert cloner.bytes_received < len(data) / 3
    assert b.objects.chunk_ids(blob) and b.objects.get(blob) == data
    assert_complete(b)

    # A client that does not say it reads several frames per blob (cas before them)
    # still gets the blob, whole and raw as before.
    old = HttpRemote(served.url, token=served.read_token)
    del old._http.headers[FRAMES_HEADER]
    c = new_store(tmp_path / "c")
    sync.clone(c, old)
    assert old.bytes_received > len(data)
    assert c.objects.get(blob) == data
    for s in (a, b, c):
        s.close()
    for r in (pusher, cloner, old):
        r.close()


def test_a_small_stored_blob_is_fetched_as_its_stored_frame(served: Served, tmp_path: Path) -> None:
    data = _header_like(20_000)  # ~1 MiB: one record, one frame
    assert len(data) < CHUNK_THRESHOLD
    a = new_store(tmp_path / "a")
    _commit_header(a, data)
    sync.push(a, HttpRemote(served.url, token=served.write_token), MAIN)
    fetcher = HttpRemote(served.url, token=served.read_token)
    b = new_store(tmp_path / "b")
    sync.clone(b, fetcher)
    assert fetcher.bytes_received < len(data) / 3
    assert b.objects.get(next(iter(entries_of(b, "main").values())).blob) == data
    assert b.objects.get_typed(next(iter(entries_of(b, "main").values())).blob)[0] == ObjType.BLOB  # type: ignore[index]
    for s in (a, b):
        s.close()
    fetcher.close()
