"""Canonical encoding: round trips, order independence, and clear errors on bad bytes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import codec
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CorruptObject, FormatVersionError
from cas.objects import Commit, Entry, EntryKey, Env, ManifestNode, Tag, decode_object, references

PROPS = settings(derandomize=True, max_examples=100, deadline=None)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
ids = st.binary(min_size=32, max_size=32).map(ObjectId)
short_text = st.text(max_size=12)


@PROPS
@given(values)
def test_pack_round_trips(value: Any) -> None:
    assert codec.unpack(codec.pack(value)) == codec.canonical(value)


@PROPS
@given(st.dictionaries(st.text(max_size=8), i64, max_size=8), st.randoms())
def test_map_order_does_not_change_bytes(d: dict[str, int], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert codec.pack(dict(items)) == codec.pack(d)


def test_tuples_and_lists_encode_alike_and_bad_keys_refused() -> None:
    assert codec.pack((1, 2)) == codec.pack([1, 2])
    with pytest.raises(TypeError):
        codec.pack({1: "x"})
    with pytest.raises(TypeError):
        codec.pack({"x": object()})
    with pytest.raises(ValueError, match="64 bits"):
        codec.pack({"x": [2**64]})


@PROPS
@given(ids, st.lists(ids, max_size=3), short_text, st.integers(0, 2**40), short_text,
       st.dictionaries(st.text(max_size=6), i64 | st.text(max_size=6), max_size=3))
def test_commit_round_trips_and_id_is_stable(
    manifest: ObjectId, parents: list[ObjectId], author: str, when: int, msg: str, meta: dict[str, Any]
) -> None:
    c = Commit(manifest, tuple(parents), author, when, msg, meta)
    data = c.encode()
    back = Commit.decode(data)
    assert back == c and back.id == c.id == ObjectId.of(data)
    assert references(ObjType.COMMIT, data) == [manifest, *parents]
    assert codec.sniff(data) == ObjType.COMMIT


@PROPS
@given(ids, short_text, short_text, st.integers(0, 2**40), short_text, st.none() | st.binary(max_size=64))
def test_tag_round_trips(target: ObjectId, name: str, tagger: str, when: int, msg: str, sig: bytes | None) -> None:
    t = Tag(target, ObjType.COMMIT, name, tagger, when, msg, sig)
    back = Tag.decode(t.encode())
    assert back == t
    assert references(ObjType.TAG, t.encode()) == [target]
    # the signed payload never covers the signature itself
    assert Tag(target, ObjType.COMMIT, name, tagger, when, msg, None).encode() == t.signed_payload()


@PROPS
@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6))
def test_env_round_trips(fields: dict[str, str]) -> None:
    e = Env(fields)
    assert Env.decode(e.encode()) == e
    assert decode_object(ObjType.ENV, e.encode()) == e


entries = st.tuples(
    st.builds(EntryKey, ids, st.sampled_from(["inductor", "autotune", "pgo"]), short_text, short_text),
    st.builds(Entry, ids, st.integers(0, 2**40), st.none() | short_text,
              st.dictionaries(st.text(max_size=4), i64, max_size=2)),
)


@PROPS
@given(st.lists(entries, max_size=5), st.lists(st.tuples(st.integers(0, 255), ids), max_size=4))
def test_manifest_nodes_round_trip(leaf: list[Any], inner: list[Any]) -> None:
    node = ManifestNode(1, len(leaf), entries=tuple(leaf))
    assert ManifestNode.decode(node.encode()) == node
    refs = references(ObjType.NODE, node.encode())
    assert {e.blob for _, e in leaf} | {k.env for k, _ in leaf} == set(refs)
    if inner:
        parent = ManifestNode(0, 9, children=tuple(inner))
        assert ManifestNode.decode(parent.encode()) == parent
        assert references(ObjType.NODE, parent.encode()) == [c for _, c in inner]


@pytest.mark.parametrize(
    "data",
    [b"", b"ca", b"xyz\x01\x04", b"cas\x01\x63", b"cas\x01\x00abc", b"cas\x01\x04\xc1"],
    ids=["empty", "short", "bad-magic", "unknown-type", "blob-framed", "bad-body"],
)
def test_bad_frames_are_corrupt_objects(data: bytes) -> None:
    with pytest.raises(CorruptObject):
        codec.decode(data)


def test_other_format_version_is_a_version_error() -> None:
    data = bytearray(Env({"a": "b"}).encode())
    data[3] = 99
    with pytest.raises(FormatVersionError):
        codec.decode(bytes(data))
    assert codec.sniff(bytes(data)) is None


def test_wrong_type_and_malformed_bodies_are_corrupt() -> None:
    env = Env({"a": "b"}).encode()
    with pytest.raises(CorruptObject):
        Commit.decode(env)
    with pytest.raises(CorruptObject):
        Commit.decode(codec.encode(ObjType.COMMIT, {"manifest": b"short"}))
    with pytest.raises(CorruptObject):
        ManifestNode.decode(codec.encode(ObjType.NODE, {"d": 0}))
    with pytest.raises(CorruptObject):
        decode_object(ObjType.BLOB, b"raw")
