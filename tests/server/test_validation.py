"""Everything stored is well formed: a real `cas serve` answers malformed objects, refs at
non-commits, non-finite numbers, deep nesting and oversized JSON with a 4xx (never a 5xx)
and stores nothing; fsck finds a malformed object that got into a store behind its back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from hostile import EMPTY_NODE, UNSHOWABLE, Parts, wrong_types
from servers import Served

from cas import pack
from cas.codec import ObjType, encode
from cas.digest import ObjectId
from cas.fsck import CORRUPT, fsck
from cas.objects import Commit, Env, ManifestNode
from cas.store import Store


@pytest.fixture
def server(small: Served) -> Served:
    return small


def _auth(s: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {s.write_token}"}


def push(s: Served, *objects: tuple[ObjType, bytes]) -> httpx.Response:
    wire = [(ObjectId.of(data), otype, data) for otype, data in objects]
    return httpx.post(f"{s.url}/v1/packs", content=pack.encode_bytes(wire), headers=_auth(s), timeout=30)


def _commit_body(**change: Any) -> dict[str, Any]:
    body = {"manifest": bytes(32), "parents": [], "author": "a", "time": 1, "message": "m", "metadata": {}}
    body.update(change)
    return body


MALFORMED = {
    "garbage env": (ObjType.ENV, b"\x00garbage bytes, not an env"),
    "env of a list": (ObjType.ENV, encode(ObjType.ENV, [1, 2])),
    "commit time text": (ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body(time="abc"))),
    "commit time inf": (ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body(time=float("inf")))),
    "commit time nan in metadata": (ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body(metadata={"t": float("nan")}))),
    "commit metadata a list": (ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body(metadata=[1]))),
    "commit extra field": (ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body(evil=1))),
    "commit deep metadata": (ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body(metadata=json.loads("[" * 200 + "]" * 200)))),
    # the right fields, in the wrong order: a second encoding of one commit
    "commit not canonical": (ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body())[:5]
                             + msgpack.packb(dict(reversed(list(_commit_body().items()))))),
    "tag of unknown type": (ObjType.TAG, encode(ObjType.TAG, {
        "target": bytes(32), "type": "sandwich", "name": "t", "tagger": "a", "time": 1, "message": "m"})),
    "node with a traversal key": (ObjType.NODE, ManifestNode.encode_leaf(
        0, [[bytes(32), "cpp_kernel", "ab/../../../../evil.so", "", bytes(32), 1, None, {}]])),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_objects_are_refused_with_4xx_and_not_stored(server: Served, name: str) -> None:
    otype, data = MALFORMED[name]
    resp = push(server, (otype, data))
    assert 400 <= resp.status_code < 500, resp.text
    assert "\n" not in resp.json()["message"]
    with Store(server.store_path) as store:
        assert store.objects.missing([ObjectId.of(data)]) == [ObjectId.of(data)]


@pytest.mark.parametrize("time_ms", [-1.0, 0, 1e-300, 0.5])
def test_an_autotune_entry_claiming_an_impossible_time_is_refused(server: Served, time_ms: float) -> None:
    # Whole: the env and blob it names come in the same pack, so only the time can refuse it.
    blob, env = b"an autotune record", Env({"device": "cpu"}).encode()
    node = ManifestNode.encode_leaf(0, [[ObjectId.of(env).raw, "autotune_record", "gemm/mm/0", "cpu-x",
                                         ObjectId.of(blob).raw, len(blob), None, {"time_ms": time_ms}]])
    resp = push(server, (ObjType.BLOB, blob), (ObjType.ENV, env), (ObjType.NODE, node))
    with Store(server.store_path) as store:
        stored = not store.objects.missing([ObjectId.of(node)])
    if time_ms == 0.5:  # a possible time: the same node is taken
        assert resp.status_code < 300 and stored, resp.text
        return
    assert resp.status_code == 400 and "impossible" in resp.json()["message"] and not stored, resp.text


@pytest.mark.parametrize("name", sorted(UNSHOWABLE))
def test_what_cannot_be_shown_gets_422_with_its_references_at_hand(server: Served, name: str) -> None:
    """Years past 9999, compile times that are text: `cas log` and /ui could not show
    them. Sent with everything they reference, so that closure is not the reason."""
    parts = Parts("server")
    bad = UNSHOWABLE[name](parts)
    resp = push(server, *((otype, data) for _, otype, data in [parts.blob, parts.env, parts.node, parts.commit, bad]))
    assert resp.status_code == 422 and resp.json()["error"] == "CorruptObject", resp.text
    assert "\n" not in resp.json()["message"]
    with Store(server.store_path) as store:
        assert store.objects.missing([bad[0], parts.commit[0]]) == [bad[0], parts.commit[0]]


@pytest.mark.parametrize("shape", wrong_types("server"), ids=lambda shape: shape.name)
def test_a_reference_of_the_wrong_type_gets_422_and_nothing_is_stored(server: Served, shape: Any) -> None:
    resp = push(server, *((otype, data) for _, otype, data in [*shape.refs, shape.bad]))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "CorruptObject"
    assert shape.says in resp.json()["message"] and "\n" not in resp.json()["message"]
    sent = [shape.bad[0], *(oid for oid, _, _ in shape.refs if oid != EMPTY_NODE)]
    with Store(server.store_path) as store:
        assert store.objects.missing(sent) == sent


def test_a_ref_names_a_commit_or_tag_only(server: Served) -> None:
    blob = b"just bytes, not a commit"
    assert push(server, (ObjType.BLOB, blob)).status_code == 200
    resp = httpx.put(f"{server.url}/v1/refs/refs/heads/evil", json={"new": ObjectId.of(blob).hex, "expected": None},
                     headers=_auth(server))
    assert resp.status_code == 400 and resp.json()["error"] == "BadRefTarget"
    assert httpx.get(f"{server.url}/v1/refs", headers=_auth(server)).json() == {}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 413),  # oversized
        (b"[" * 2000 + b"]" * 2000, 400),  # deep nesting within the size limit
        (b'{"new": 1e999}', 400),
        (b'{"new": "zz"}', 400),
        (b"[]", 400),
        (b"\xff\xfe", 400),
    ],
)
def test_bad_ref_bodies_get_4xx(server: Served, body: bytes, status: int) -> None:
    resp = httpx.put(f"{server.url}/v1/refs/refs/heads/x", content=body, headers=_auth(server))
    assert resp.status_code == status, resp.text


def test_fsck_finds_a_malformed_env_and_commit(store_path: Path, store: Store) -> None:
    env = store.objects.put(b"\x00garbage, stored as an env behind cas's back", ObjType.ENV)
    commit = store.objects.put(MALFORMED["commit time text"][1], ObjType.COMMIT)
    good = store.objects.put_object(Commit(store.objects.put_object(ManifestNode(0, 0)), (), "a", 1, "m"))
    corrupt = {f.oid for f in fsck(store).findings if f.kind == CORRUPT}
    assert corrupt == {env, commit}
    assert good not in corrupt
