"""Every id the fetch walk asks for has a type known in advance; an object of another
type is refused by the transport from its header, before its content is read.

The origin here is a path remote whose store was built by hand (as a hostile or broken
one could be): its references are present, so closure holds, but one of them names a
256 MiB blob where a commit, a manifest node or a tag's commit belongs. The clone fails
with one line naming the object and the remote, stores none of it, makes no ref, and
never holds the blob in memory (tracemalloc: a decode would cost 256 MiB at least).
The same holds over HTTP and S3, from a served store or a bucket written past ingest.
"""

from __future__ import annotations

import tracemalloc
import uuid
from pathlib import Path

import pytest
from hostile import Parts
from servers import S3_KEY, S3_REGION, S3_SECRET

from cas import pack, sync
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CorruptObject
from cas.objects import Commit, ManifestNode, Tag
from cas.remote.base import Remote
from cas.remote.local import LocalRemote
from cas.store import Store

from .helpers import new_store

BIG = 256 << 20


class _Zeros:
    """A stream of ``n`` zero bytes, never all in memory."""

    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def _hostile_origin(path: Path, where: str) -> tuple[ObjectId, str]:
    """A store whose ref leads to a 256 MiB blob at ``where``; the blob's id and the
    type the walk expected there."""
    with new_store(path) as store:
        big = store.objects.put_stream(_Zeros(BIG))  # type: ignore[arg-type]
        node = store.objects.put_object(ManifestNode(depth=0, count=0))
        if where == "tag target":
            tag = Tag(big, ObjType.COMMIT, "v1", "mallory", 1_700_000_000, "a blob, says commit")
            store.refs.set("refs/tags/v1", store.objects.put_object(tag))
            return big, "commit"
        manifest, parents = (big, ()) if where == "commit manifest" else (node, (big,))
        commit = Commit(manifest, parents, "mallory", 1_700_000_000, where, {})
        store.refs.set("refs/heads/main", store.objects.put_object(commit))
        return big, "node" if where == "commit manifest" else "commit"


@pytest.mark.parametrize("where", ["commit parent", "commit manifest", "tag target"])
def test_fetch_refuses_a_blob_where_the_walk_expects_another_type(tmp_path: Path, where: str) -> None:
    big, expected = _hostile_origin(tmp_path / "origin", where)
    remote = LocalRemote(tmp_path / "origin")
    local = new_store(tmp_path / "local")
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObject) as caught:
            sync.clone(local, remote, remote_name="origin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        remote.close()
    assert peak < BIG // 4, f"{peak >> 20} MiB"
    message = caught.value.message
    assert "\n" not in message
    assert big.short() in message and remote.url in message
    assert f"is a blob of {BIG} bytes, expected a {expected}" in message
    assert local.objects.missing([big]) == [big]
    assert local.refs.as_dict() == {}
    local.close()


def test_a_tag_whose_target_has_another_type_than_it_names_is_refused(tmp_path: Path) -> None:
    """A tag says "commit" and names a tag: the walk expects what the tag names."""
    with new_store(tmp_path / "origin") as store:
        node = store.objects.put_object(ManifestNode(depth=0, count=0))
        commit = store.objects.put_object(Commit(node, (), "a", 1_700_000_000, "c", {}))
        inner = store.objects.put_object(Tag(commit, ObjType.COMMIT, "inner", "a", 1_700_000_000, "m"))
        outer = Tag(inner, ObjType.COMMIT, "outer", "a", 1_700_000_000, "lies about its target")
        store.refs.set("refs/tags/outer", store.objects.put_object(outer))
    local = new_store(tmp_path / "local")
    remote = LocalRemote(tmp_path / "origin")
    try:
        with pytest.raises(CorruptObject, match=f"object {inner.short()} from .* is a tag of"):
            sync.clone(local, remote, remote_name="origin")
    finally:
        remote.close()
    assert local.refs.as_dict() == {}
    local.close()


def _written_behind_ingest(kind: str, request: pytest.FixtureRequest) -> tuple[Remote, Parts, ObjectId]:
    """A remote holding a commit whose manifest is a blob, written past every check: into
    the store behind a real `cas serve`, or into a bucket as a hostile writer would."""
    parts = Parts(kind)
    bad = parts.commit_of(parts.blob)
    if kind == "http":
        from cas.remote.http import HttpRemote

        served = request.getfixturevalue("served")
        with Store(served.store_path) as store:
            store.objects.write((otype, data) for _, otype, data in [parts.blob, bad])
            store.refs.set("refs/heads/main", bad[0])
        return HttpRemote(served.url, token=served.read_token), parts, bad[0]
    from cas.remote.s3 import S3Remote

    seaweed = request.getfixturevalue("seaweed")
    url = f"s3://{request.getfixturevalue('sync_bucket')}/t-{uuid.uuid4().hex[:12]}"
    remote = S3Remote(url, endpoint=seaweed.endpoint, region=S3_REGION, access_key=S3_KEY, secret_key=S3_SECRET)
    remote._upload(pack.encode_bytes([parts.blob, bad]))  # past send_pack's checks
    remote.update_ref("refs/heads/main", bad[0], None)
    return remote, parts, bad[0]


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_a_remote_written_behind_ingest_is_refused_by_the_clone(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Whoever wrote the remote, the client checks each type it receives: the clone
    fails with one line, stores none of it and makes no ref."""
    remote, parts, bad = _written_behind_ingest(kind, request)
    local = new_store(tmp_path / "local")
    try:
        with pytest.raises(CorruptObject) as caught:
            sync.clone(local, remote, remote_name="origin")
    finally:
        remote.close()
    message = caught.value.message
    assert "\n" not in message and f"{parts.blob[0].short()} from" in message and "expected a node" in message
    assert local.objects.missing([bad, parts.blob[0]]) == [bad, parts.blob[0]]
    assert local.refs.as_dict() == {}
    local.close()
