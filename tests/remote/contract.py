"""The contract every Remote must keep (cas/remote/base.py), as one suite of tests.

A transport binds it by subclassing :class:`RemoteContract` and providing a ``remote``
fixture that yields a fresh, empty remote (and closes it afterwards)::

    from .contract import RemoteContract

    class TestHttpRemote(RemoteContract):
        @pytest.fixture
        def remote(self, server) -> Iterator[Remote]:
            r = HttpRemote(server.url, token=server.write_token)
            yield r
            r.close()

The suite only talks to the remote through the Remote protocol plus the optional
``send_pack_bytes`` (to hand over malformed packs), so "not stored" is checked with the
remote's own ``missing``.
"""

from __future__ import annotations

import os
import struct

import pytest
from hostile import EMPTY_NODE, UNSHOWABLE, Parts, wrong_types

from cas import pack
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import (
    BadRefTarget,
    CorruptObject,
    FormatVersionError,
    IntegrityError,
    MalformedPack,
    ObjectNotFound,
    RefConflict,
)
from cas.objects import Commit, ManifestNode
from cas.remote.base import Remote, WireObject


def blob(data: bytes) -> WireObject:
    return ObjectId.of(data), ObjType.BLOB, data


def commit_objects(message: str, parents: tuple[ObjectId, ...] = ()) -> list[WireObject]:
    """A minimal complete commit (empty manifest + commit), in closure order."""
    node = ManifestNode(depth=0, count=0).encode()
    c = Commit(ObjectId.of(node), parents, "tester@example", 1_700_000_000, message, {})
    data = c.encode()
    return [(ObjectId.of(node), ObjType.NODE, node), (ObjectId.of(data), ObjType.COMMIT, data)]


def ids(objs: list[WireObject]) -> list[ObjectId]:
    return [o[0] for o in objs]


class RemoteContract:
    """Shared tests; subclasses provide the ``remote`` fixture (fresh and empty)."""

    # -- refs and misses -------------------------------------------------------------

    def test_empty_remote_lists_no_refs(self, remote: Remote) -> None:
        assert remote.list_refs() == {}

    def test_missing_lists_absent_ids_in_order(self, remote: Remote) -> None:
        objs = [blob(b"a" * 10), blob(b"b" * 20), blob(b"c" * 30)]
        assert remote.missing(ids(objs)) == ids(objs)
        remote.send_pack(objs[1:2])
        assert remote.missing(ids(objs)) == [objs[0][0], objs[2][0]]

    def test_missing_of_nothing_is_empty(self, remote: Remote) -> None:
        assert remote.missing([]) == []

    def test_fetch_leaves_out_absent_ids(self, remote: Remote) -> None:
        present, absent = blob(b"present"), blob(b"absent")
        remote.send_pack([present])
        got = remote.fetch([absent[0], present[0]])
        assert got == [present]

    # -- round trips ------------------------------------------------------------------

    def test_send_then_fetch_round_trips_types_and_bytes(self, remote: Remote) -> None:
        objs = [blob(os.urandom(n)) for n in (0, 1, 700, 70_000)]
        objs.append(blob(b"compressible " * 5000))
        objs += commit_objects("round trip")
        sent = remote.send_pack(objs)
        assert sent > 0
        assert remote.missing(ids(objs)) == []
        got = {oid: (t, d) for oid, t, d in remote.fetch(ids(objs))}
        assert got == {oid: (t, d) for oid, t, d in objs}
        for oid, _, data in remote.fetch(ids(objs)):
            assert ObjectId.of(data) == oid

    def test_large_blob_round_trips_whole(self, remote: Remote) -> None:
        big = blob(os.urandom(5 << 20))  # above the 4 MiB chunking threshold
        remote.send_pack([big])
        assert remote.missing([big[0]]) == []
        assert remote.fetch([big[0]]) == [big]

    def test_resending_is_a_no_op(self, remote: Remote) -> None:
        objs = [blob(b"once"), *commit_objects("idempotent")]
        remote.send_pack(objs)
        remote.send_pack(objs)
        assert remote.missing(ids(objs)) == []
        assert sorted(remote.fetch(ids(objs))) == sorted(objs)

    def test_progress_reports_objects_and_bytes(self, remote: Remote) -> None:
        seen: list[tuple[int, int]] = []
        objs = [blob(os.urandom(1000)) for _ in range(5)]
        remote.send_pack(objs, progress=lambda n, b: seen.append((n, b)))
        assert seen and seen[-1][0] == 5 and seen[-1][1] > 0

    # -- expected types (Remote.fetch ``expect``) --------------------------------------

    def test_fetch_with_expected_types_returns_what_matches(self, remote: Remote) -> None:
        small, big = blob(b"a leaf"), blob(os.urandom(5 << 20))
        node, commit = commit_objects("expected")
        remote.send_pack([small, big, node, commit])
        expect = {small[0]: {ObjType.BLOB}, big[0]: {ObjType.BLOB, ObjType.ENV},
                  commit[0]: {ObjType.COMMIT, ObjType.TAG}}
        absent = blob(b"never sent")[0]
        # ids absent from ``expect`` may be of any type; absent objects are left out
        asked = [small[0], big[0], node[0], commit[0], absent]
        got = remote.fetch(asked, expect={**expect, absent: {ObjType.TAG}})
        assert sorted(got) == sorted([small, big, node, commit])

    def test_fetch_refuses_an_object_of_another_type_and_returns_nothing(self, remote: Remote) -> None:
        """A ref naming a blob where a commit belongs: refused with one line naming the
        object and the remote (from its header: a large blob is never decompressed).
        Each wrong object on its own fetch (one remote for the three: a server start
        each would cost more than the fetches)."""
        small, big = blob(b"not a commit"), blob(os.urandom(5 << 20))
        node, commit = commit_objects("fine")
        remote.send_pack([small, big, node, commit])
        tops = {ObjType.COMMIT, ObjType.TAG}
        for wrong in (small, big, node):
            with pytest.raises(CorruptObject) as caught:
                remote.fetch([commit[0], wrong[0]], expect={commit[0]: tops, wrong[0]: tops})
            message = caught.value.message
            assert wrong[0].short() in message and remote.url in message and "\n" not in message
            assert wrong[1].label in message and "commit" in message

    # -- integrity --------------------------------------------------------------------

    def test_wrong_hash_upload_is_rejected_and_not_stored(self, remote: Remote) -> None:
        good = blob(b"good object")
        lie = ObjectId.of(b"what it claims to be")
        with pytest.raises(IntegrityError):
            remote.send_pack([good, (lie, ObjType.BLOB, b"what it really is")])
        assert remote.missing([lie, ObjectId.of(b"what it really is")]) == [
            lie,
            ObjectId.of(b"what it really is"),
        ]

    def test_corrupt_object_in_raw_pack_rejects_the_whole_pack(self, remote: Remote) -> None:
        good = blob(b"first, fine")
        lie = ObjectId.of(b"claimed")
        data = pack.encode_bytes([good, (lie, ObjType.BLOB, b"actual")])
        with pytest.raises(CorruptObject):
            remote.send_pack_bytes(data)  # type: ignore[attr-defined]
        assert remote.missing([good[0], lie]) == [good[0], lie]

    def test_truncated_pack_is_rejected_and_nothing_stored(self, remote: Remote) -> None:
        objs = [blob(b"x" * 100), blob(os.urandom(3000))]
        data = pack.encode_bytes(objs)
        for cut in (1, 9, 30, 60, -1, -20):  # each refused, and none leaves an object behind
            with pytest.raises(MalformedPack):
                remote.send_pack_bytes(data[:cut])  # type: ignore[attr-defined]
            assert remote.missing(ids(objs)) == ids(objs), cut

    def test_garbage_and_trailing_bytes_are_rejected(self, remote: Remote) -> None:
        obj = blob(b"payload")
        with pytest.raises(MalformedPack):
            remote.send_pack_bytes(b"this is not a pack at all")  # type: ignore[attr-defined]
        with pytest.raises(MalformedPack):
            remote.send_pack_bytes(pack.encode_bytes([obj]) + b"junk")  # type: ignore[attr-defined]
        assert remote.missing([obj[0]]) == [obj[0]]

    def test_trailer_count_mismatch_is_rejected(self, remote: Remote) -> None:
        obj = blob(b"counted")
        data = bytearray(pack.encode_bytes([obj]))
        struct.pack_into("<Q", data, len(data) - 40, 2)
        with pytest.raises(MalformedPack):
            remote.send_pack_bytes(bytes(data))  # type: ignore[attr-defined]
        assert remote.missing([obj[0]]) == [obj[0]]

    def test_unknown_pack_version_is_refused(self, remote: Remote) -> None:
        data = bytearray(pack.encode_bytes([blob(b"v")]))
        data[8] = 99
        with pytest.raises(FormatVersionError):
            remote.send_pack_bytes(bytes(data))  # type: ignore[attr-defined]

    def test_pack_with_an_object_whose_references_are_absent_is_refused(self, remote: Remote) -> None:
        """Closure: a commit whose manifest the remote lacks must not land, nor its pack."""
        fine = blob(b"innocent bystander")
        node, commit = commit_objects("orphan")
        with pytest.raises(MalformedPack):
            remote.send_pack([fine, commit])
        assert remote.missing([fine[0], commit[0]]) == [fine[0], commit[0]]
        remote.send_pack([node, commit])  # with its reference, the same commit is fine
        assert remote.missing([commit[0]]) == []

    # -- reference types and what can be shown (docs/format.md, "Reference types") -------

    @pytest.mark.parametrize("where", ["same pack", "held already"])
    def test_a_reference_to_an_object_of_the_wrong_type_is_refused_and_nothing_stored(
        self, remote: Remote, where: str
    ) -> None:
        """Every reference role, naming an object of a type it must not have: refused with
        one line naming both objects, whether the named object travels in the same pack
        or the remote holds it already; nothing of the pack is stored."""
        for shape in wrong_types(where):
            bystander = blob(f"innocent bystander of {shape.name}, {where}".encode())
            if where == "held already":
                remote.send_pack(shape.refs)
                pack_ = [bystander, shape.bad]
            else:
                pack_ = [bystander, *shape.refs, shape.bad]
            with pytest.raises(CorruptObject) as caught:
                remote.send_pack(pack_)
            message = caught.value.message
            assert shape.says in message and "\n" not in message, shape.name
            lost = [o[0] for o in pack_ if o[0] != EMPTY_NODE]
            assert remote.missing(lost) == lost, shape.name

    def test_what_cannot_be_shown_is_refused_and_not_stored(self, remote: Remote) -> None:
        """Times outside years 1 to 9999, compile times that are not counts (cas log and
        /ui could not show them): refused, whatever they reference."""
        parts = Parts("unshowable")
        remote.send_pack([parts.blob, parts.env, parts.node, parts.commit])
        for name, make in UNSHOWABLE.items():
            bad = make(parts)
            with pytest.raises(CorruptObject) as caught:
                remote.send_pack([bad])
            assert "\n" not in caught.value.message, name
            assert remote.missing([bad[0]]) == [bad[0]], name

    def test_a_ref_names_a_commit_or_tag_only(self, remote: Remote) -> None:
        parts = Parts("refs")
        remote.send_pack([parts.blob, parts.env, parts.node])
        for target in (parts.blob, parts.env, parts.node):
            with pytest.raises(BadRefTarget, match=f"{target[0].short()}: a {target[1].label}, not a commit or tag"):
                remote.update_ref("refs/heads/main", target[0], None)
        assert remote.list_refs() == {}

    def test_chunks_do_not_travel(self, remote: Remote) -> None:
        data = b"a chunk of some large blob"
        with pytest.raises(MalformedPack):
            remote.send_pack([(ObjectId.of(data), ObjType.CHUNK, data)])
        assert remote.missing([ObjectId.of(data)]) == [ObjectId.of(data)]

    # -- refs: compare-and-swap and closure -----------------------------------------------

    def test_update_ref_creates_and_lists(self, remote: Remote) -> None:
        objs = commit_objects("first")
        remote.send_pack(objs)
        remote.update_ref("refs/heads/main", objs[-1][0], None)
        assert remote.list_refs() == {"refs/heads/main": objs[-1][0]}
        assert remote.list_refs("refs/tags/") == {}

    def test_update_ref_is_compare_and_swap(self, remote: Remote) -> None:
        one, two = commit_objects("one"), commit_objects("two")
        remote.send_pack(one + two)
        remote.update_ref("refs/heads/main", one[-1][0], None)
        with pytest.raises(RefConflict):
            remote.update_ref("refs/heads/main", two[-1][0], None)
        with pytest.raises(RefConflict):
            remote.update_ref("refs/heads/main", two[-1][0], two[-1][0])
        assert remote.list_refs()["refs/heads/main"] == one[-1][0]
        remote.update_ref("refs/heads/main", two[-1][0], one[-1][0])
        assert remote.list_refs()["refs/heads/main"] == two[-1][0]

    def test_update_ref_to_missing_object_is_refused(self, remote: Remote) -> None:
        ghost = commit_objects("never sent")[-1][0]
        with pytest.raises(ObjectNotFound):
            remote.update_ref("refs/heads/main", ghost, None)
        assert remote.list_refs() == {}

    def test_delete_ref(self, remote: Remote) -> None:
        objs = commit_objects("doomed")
        remote.send_pack(objs)
        remote.update_ref("refs/tags/v1", objs[-1][0], None)
        with pytest.raises(RefConflict):
            remote.update_ref("refs/tags/v1", None, ObjectId.of(b"not it"))
        remote.update_ref("refs/tags/v1", None, objs[-1][0])
        assert remote.list_refs() == {}
