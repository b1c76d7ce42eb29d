"""The cache of decoded compressed objects (cas.store.blobcache): it saves a hot blob's
decompression and never answers for what the store no longer holds as it was."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zstandard

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CorruptObject
from cas.store import Store
from cas.store import records as rc
from cas.store.blobcache import ENTRY_MAX, BlobCache

TEXT = b"    tmp0 = tl.load(in_ptr0 + (x0), xmask, eviction_policy='evict_last')\n" * 1500


def put_compressed(store: Store, data: bytes = TEXT) -> ObjectId:
    oid = store.objects.put(data)
    rec = store.objects.record(oid)
    assert rec is not None and rec.compressed
    return oid


def test_a_hot_compressed_blob_reads_the_same_bytes_every_time(store: Store) -> None:
    oid = put_compressed(store)
    assert store.objects.get(oid) == TEXT
    assert store.objects.get(oid) == TEXT
    assert store.objects.get_typed(oid, verify=True) == (ObjType.BLOB, TEXT)
    assert len(store._env.cache) == 1


def test_a_deleted_blob_is_a_miss_though_it_was_cached(store: Store) -> None:
    oid = put_compressed(store)
    assert store.objects.get(oid) == TEXT
    assert store.maintenance.delete([oid]) == 1
    assert store.objects.get(oid) is None


def test_a_blob_deleted_by_another_handle_is_a_miss(store: Store, store_path: Path) -> None:
    oid = put_compressed(store)
    assert store.objects.get(oid) == TEXT
    with Store(store_path) as other:
        other.maintenance.delete([oid])
    assert store.objects.get(oid) is None
    assert store.objects.put(TEXT) == oid and store.objects.get(oid) == TEXT


def test_a_damaged_record_is_decoded_afresh_and_caught_by_verify(store: Store) -> None:
    oid = put_compressed(store)
    assert store.objects.get(oid) == TEXT
    other = TEXT.replace(b"tmp0", b"tmp9")
    record = rc.frame_record(ObjType.BLOB, len(other), zstandard.ZstdCompressor().compress(other))
    store._env.write(lambda txn: txn.put(oid.raw, record, db=store._env.objects))
    assert store.objects.get(oid) == other  # what the disk holds now, not what was cached
    with pytest.raises(CorruptObject):
        store.objects.get(oid, verify=True)


def test_the_cache_stays_within_its_bound() -> None:
    cache = BlobCache(limit=4 * 100_000)
    for i in range(20):
        cache.put(b"%032d" % i, b"r" * 1000, bytes(99_000))
    assert cache.nbytes <= 4 * 100_000 and len(cache) == 4
    assert cache.get(b"%032d" % 19, b"r" * 1000) is not None
    assert cache.get(b"%032d" % 0, b"r" * 1000) is None
    cache.put(b"big".ljust(32), b"r", bytes(ENTRY_MAX + 1))
    assert cache.get(b"big".ljust(32), b"r") is None


def test_threads_read_one_cached_blob(store: Store) -> None:
    oid = put_compressed(store)
    results: list[bool] = []

    def read() -> None:
        results.extend(store.objects.get(oid) == TEXT for _ in range(200))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 800
