"""ObjectId and hashing: ids agree with the BLAKE3 reference (and so with ``b3sum``)."""

from __future__ import annotations

import io
from pathlib import Path

import blake3
import pytest

from cas.digest import Hasher, ObjectId, hash_file, hash_stream, is_hex_prefix
from cas.errors import BadObjectId, CasError

# BLAKE3 of the empty input, from the BLAKE3 test vectors (what `b3sum /dev/null` prints).
EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_empty_input_matches_published_vector(tmp_path: Path) -> None:
    assert ObjectId.of(b"").hex == EMPTY
    (tmp_path / "empty").write_bytes(b"")
    assert hash_file(tmp_path / "empty").hex == EMPTY


@pytest.mark.parametrize("size", [1, 1023, 1024, 1025, 64 << 10, (1 << 20) - 1, 1 << 20, (3 << 20) + 7])
def test_id_agrees_with_reference_across_thresholds(size: int, tmp_path: Path) -> None:
    # sizes straddle BLAKE3's 1 KiB chunk and our 1 MiB multi-threaded switch
    data = bytes((i * 131 + 7) % 251 for i in range(size))
    ref = blake3.blake3(data).hexdigest()
    assert ObjectId.of(data).hex == ref
    assert ObjectId.of(memoryview(data)).hex == ref
    path = tmp_path / "f"
    path.write_bytes(data)
    assert hash_file(path).hex == ref
    assert hash_stream(io.BytesIO(data), chunk_size=4097).hex == ref


def test_hasher_counts_bytes_and_matches_one_shot() -> None:
    h = Hasher()
    for part in (b"a" * 10, b"", b"b" * 5000):
        h.update(part)
    assert h.size == 5010
    assert h.digest() == ObjectId.of(b"a" * 10 + b"b" * 5000)


def test_parse_round_trip_and_forms() -> None:
    oid = ObjectId.of(b"x")
    assert ObjectId.parse(oid.hex) == oid
    assert ObjectId.parse("  " + oid.hex.upper() + "\n") == oid
    assert str(oid) == oid.hex and bytes(oid) == oid.raw
    assert oid.short() == oid.hex[:12] and oid.short(6) == oid.hex[:6]
    assert len({oid, ObjectId(oid.raw)}) == 1
    assert sorted([ObjectId(b"\x02" * 32), ObjectId(b"\x01" * 32)])[0].raw == b"\x01" * 32


@pytest.mark.parametrize("text", ["", "abc", "g" * 64, "a" * 63, "a" * 65])
def test_parse_rejects_bad_ids_with_one_line_usage_error(text: str) -> None:
    with pytest.raises(BadObjectId) as err:
        ObjectId.parse(text)
    assert isinstance(err.value, CasError) and err.value.exit_code == 2
    assert "\n" not in str(err.value)


def test_raw_id_must_be_32_bytes() -> None:
    with pytest.raises(BadObjectId):
        ObjectId(b"\x00" * 31)


def test_hex_prefix_rules() -> None:
    assert is_hex_prefix("abcd") and is_hex_prefix("ABCDEF")
    assert not is_hex_prefix("abc") and not is_hex_prefix("xyz1") and not is_hex_prefix("a" * 65)
