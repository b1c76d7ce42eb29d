"""The contract suite bound to S3Remote against a real SeaweedFS, plus S3 specifics."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from bombs import bombs
from servers import S3_KEY, S3_REGION, S3_SECRET, Seaweed

from cas.errors import AuthError, CorruptObject, MalformedPack, RefConflict, RemoteError
from cas.remote import open_remote
from cas.remote.s3 import S3Remote, decode_index, encode_index, parse_url

from .contract import RemoteContract, blob, commit_objects, ids


def make(seaweed: Seaweed, url: str, **kw: object) -> S3Remote:
    opts = {"endpoint": seaweed.endpoint, "region": S3_REGION, "access_key": S3_KEY,
            "secret_key": S3_SECRET, **kw}
    return S3Remote(url, **opts)  # type: ignore[arg-type]


class TestS3Remote(RemoteContract):
    @pytest.fixture
    def remote(self, seaweed: Seaweed, s3_url: str) -> Iterator[S3Remote]:
        r = make(seaweed, s3_url)
        yield r
        r.close()


def test_url_layout() -> None:
    assert parse_url("s3://b/team/cache/") == ("b", "team/cache/cas-v1/")
    assert parse_url("s3://b") == ("b", "cas-v1/")


def test_open_remote_reads_the_usual_aws_variables(
    seaweed: Seaweed, s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_REGION", S3_REGION)
    r = open_remote(s3_url)
    assert isinstance(r, S3Remote)
    objs = commit_objects("via env")
    r.send_pack(objs)
    r.update_ref("refs/heads/main", objs[-1][0], None)
    assert r.list_refs() == {"refs/heads/main": objs[-1][0]}
    r.close()


def test_small_objects_travel_in_packs(seaweed: Seaweed, s3_url: str) -> None:
    """1000 objects: one pack and its index (2 PUTs), and one ranged GET to read back."""
    r = make(seaweed, s3_url)
    objs = [blob(f"artifact {i}".encode() * 30) for i in range(1000)]
    r.send_pack(objs)
    keys = [o["Key"] for o in seaweed.client.list_objects_v2(
        Bucket=r.bucket, Prefix=r.root)["Contents"]]
    assert len(keys) == 2 and {k.rsplit(".", 1)[1] for k in keys} == {"pack", "idx"}
    other = make(seaweed, s3_url)  # a fresh client: learns the index from the bucket
    before = other.requests
    assert other.fetch(ids(objs[::7])) == objs[::7]
    assert other.requests - before == 3  # LIST, GET index, one ranged GET of the pack
    r.close()
    other.close()


def test_nothing_new_costs_one_request(seaweed: Seaweed, s3_url: str) -> None:
    r = make(seaweed, s3_url)
    objs = commit_objects("tip")
    r.send_pack(objs)
    r.update_ref("refs/heads/main", objs[-1][0], None)
    r.update_ref("refs/tags/v1", objs[-1][0], None)
    before = r.requests
    assert set(r.list_refs()) == {"refs/heads/main", "refs/tags/v1"}
    assert r.requests - before == 1
    r.close()


def test_index_cache_on_disk_saves_requests(seaweed: Seaweed, s3_url: str, tmp_path: Path) -> None:
    objs = [blob(f"x{i}".encode() * 100) for i in range(50)]
    w = make(seaweed, s3_url)
    w.send_pack(objs[:25])
    w.send_pack(objs[25:])
    a = make(seaweed, s3_url, cache_dir=tmp_path / "idx")
    assert a.missing(ids(objs)) == []
    first = a.requests
    b = make(seaweed, s3_url, cache_dir=tmp_path / "idx")
    assert b.missing(ids(objs)) == []
    assert (first, b.requests) == (3, 1)  # LIST + 2 index GETs, then only the LIST
    for r in (w, a, b):
        r.close()


def test_a_new_client_learns_many_packs_at_once(seaweed: Seaweed, s3_url: str, tmp_path: Path) -> None:
    """A first fetch reads every index (several at a time, cas.remote.s3.INDEX_READS):
    each object of each pack is found and fetched whole; one GET per index, and the
    on-disk cache written by those readers serves the next client."""
    objs = [blob(f"p{i}".encode() * 200) for i in range(24)]
    w = make(seaweed, s3_url)
    for i in range(0, len(objs), 2):
        w.send_pack(objs[i : i + 2])  # 12 packs
    a = make(seaweed, s3_url, cache_dir=tmp_path / "idx")
    got = a.fetch(ids(objs))
    assert [(o[0], bytes(o[2])) for o in got] == [(o[0], o[2]) for o in objs]
    assert a.requests == 1 + 12 + 12  # LIST, index GETs, one ranged GET per pack
    assert len(list((tmp_path / "idx").glob("*.idx"))) == 12
    assert not list((tmp_path / "idx").glob("*.tmp"))
    b = make(seaweed, s3_url, cache_dir=tmp_path / "idx")
    assert b.missing(ids(objs)) == [] and b.requests == 1
    for r in (w, a, b):
        r.close()


def test_racing_ref_writers_on_conditional_puts(seaweed: Seaweed, s3_url: str) -> None:
    """Same ref: exactly one CAS lands. Different refs: all land (retries absorb races)."""
    base = commit_objects("base")
    r = make(seaweed, s3_url)
    r.send_pack(base)
    r.update_ref("refs/heads/main", base[-1][0], None)
    tips = [commit_objects(f"racer {i}", (base[-1][0],)) for i in range(6)]
    for t in tips:
        r.send_pack(t)
    outcomes: list[str] = []
    barrier = threading.Barrier(2 * len(tips))

    def push(i: int, same_ref: bool) -> None:
        c = make(seaweed, s3_url)
        tip = tips[i][-1][0]
        barrier.wait()
        try:
            if same_ref:
                c.update_ref("refs/heads/main", tip, base[-1][0])
                outcomes.append("landed")
            else:
                c.update_ref(f"refs/heads/b{i}", tip, None)
                outcomes.append("branch")
        except RefConflict:
            outcomes.append("conflict")
        finally:
            c.close()

    threads = [threading.Thread(target=push, args=(i, s)) for i in range(len(tips)) for s in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["branch"] * 6 + ["conflict"] * 5 + ["landed"]
    refs = r.list_refs()
    assert len(refs) == 7 and refs["refs/heads/main"] in {t[-1][0] for t in tips}
    r.close()


def _bucket_key(seaweed: Seaweed, r: S3Remote, suffix: str) -> str:
    """The key of the remote's one object whose name ends in ``suffix``."""
    listed = seaweed.client.list_objects_v2(Bucket=r.bucket, Prefix=r.root)["Contents"]
    return next(o["Key"] for o in listed if o["Key"].endswith(suffix))


def test_corrupt_pack_in_the_bucket_is_caught_on_fetch(seaweed: Seaweed, s3_url: str) -> None:
    r = make(seaweed, s3_url)
    obj = blob(b"precious bytes " * 10)
    r.send_pack([obj])
    key = _bucket_key(seaweed, r, ".pack")
    data = bytearray(seaweed.client.get_object(Bucket=r.bucket, Key=key)["Body"].read())
    data[-41 - 5] ^= 0xFF  # inside the last payload (the trailer is 41 bytes)
    seaweed.client.put_object(Bucket=r.bucket, Key=key, Body=bytes(data))
    with pytest.raises(CorruptObject):
        make(seaweed, s3_url).fetch([obj[0]])
    r.close()


def test_an_index_naming_a_huge_frame_is_refused_before_any_get(seaweed: Seaweed, s3_url: str) -> None:
    r = make(seaweed, s3_url)
    obj = blob(b"precious bytes " * 10)
    r.send_pack([obj])
    key = _bucket_key(seaweed, r, ".idx")
    pack_id = key.rsplit("/", 1)[1].split(".")[0]
    body = seaweed.client.get_object(Bucket=r.bucket, Key=key)["Body"].read()
    ((oid, otype, offset, _),) = decode_index(body, pack_id)
    hostile = encode_index([(oid, otype, offset, 64 << 30)])  # a 64 GiB ranged GET
    seaweed.client.put_object(Bucket=r.bucket, Key=key, Body=hostile)
    with pytest.raises(MalformedPack, match="over the limit"):
        make(seaweed, s3_url).fetch([obj[0]])
    r.close()


def test_bad_credentials_are_an_auth_error(seaweed: Seaweed, s3_url: str) -> None:
    r = make(seaweed, s3_url, secret_key="wrong")
    with pytest.raises(AuthError):
        r.list_refs()
    r.close()


def test_missing_bucket_is_a_clear_error(seaweed: Seaweed) -> None:
    r = make(seaweed, "s3://no-such-bucket-here/x")
    with pytest.raises(RemoteError, match="does not exist"):
        r.list_refs()
    r.close()


def test_pack_whose_object_lacks_its_references_is_refused(seaweed: Seaweed, s3_url: str) -> None:
    from cas.codec import ObjType
    from cas.digest import ObjectId
    from cas.errors import MalformedPack
    from cas.objects import Commit

    r = make(seaweed, s3_url)
    c = Commit(ObjectId.of(b"no such manifest"), (), "t", 0, "orphan", {}).encode()
    orphan = (ObjectId.of(c), ObjType.COMMIT, c)
    with pytest.raises(MalformedPack, match="lacks"):
        r.send_pack([blob(b"fine"), orphan])
    assert r.missing([orphan[0], ObjectId.of(b"fine")]) == [orphan[0], ObjectId.of(b"fine")]
    assert "Contents" not in seaweed.client.list_objects_v2(Bucket=r.bucket, Prefix=r.root)
    r.close()


def test_cli_push_and_clone_over_s3(seaweed: Seaweed, s3_url: str, tmp_path: Path) -> None:
    """`cas push` / `cas clone` with an s3:// remote, configured by the usual AWS variables."""
    from cas.store import Store

    from .test_http import _cli, _commit

    env = {**os.environ, "CAS_AUTHOR": "t@x", "AWS_ENDPOINT_URL": seaweed.endpoint,
           "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": S3_REGION}
    env.pop("CAS_DIR", None)
    tip = _commit(tmp_path / "src", 50)
    _cli(tmp_path / "src", "remote", "add", "origin", s3_url, env=env)
    _cli(tmp_path / "src", "push", "origin", env=env)
    _cli(tmp_path / "dst", "clone", s3_url, env=env)
    with Store(tmp_path / "dst") as dst:
        assert dst.refs.get("refs/heads/main") == tip
    bad = {**env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    denied = _cli(tmp_path / "src", "push", "origin", env=bad, ok=False)
    assert denied.returncode == 9 and "Traceback" not in denied.stderr


@pytest.mark.parametrize("shape", [name for name, _, _ in bombs()])
def test_send_pack_bytes_refuses_bombs_and_uploads_nothing(seaweed: Seaweed, s3_url: str, shape: str) -> None:
    """The S3 remote verifies a pack through cas.ingest, as `cas serve` and a path
    remote do: the same refusals, in memory that follows the pack's size."""
    from cas.errors import CasError

    _, data, bad = next(b for b in bombs() if b[0] == shape)
    r = make(seaweed, s3_url)
    try:
        with pytest.raises(CasError):
            r.send_pack_bytes(data)
        assert r.missing(bad) == bad
        assert "Contents" not in seaweed.client.list_objects_v2(Bucket=r.bucket, Prefix=r.root)
    finally:
        r.close()


@pytest.mark.parametrize("key, call", [("refs", "list_refs"), ("packs/p.idx", "missing")])
def test_an_s3_object_over_its_limit_is_refused_before_it_is_read(
    seaweed: Seaweed, s3_url: str, key: str, call: str
) -> None:
    """A bucket is a stranger too: a refs object or pack index past its limit (a
    terabyte, for all the client knows) is refused from its length, not read."""
    from cas.remote import bounded

    r = make(seaweed, s3_url)
    limit = bounded.MAX_REFS if key == "refs" else bounded.MAX_INDEX
    r._put(key, b" " * (limit + 1))
    received = r.bytes_received
    with pytest.raises(RemoteError, match=f"over the limit of {limit} bytes"):
        r.list_refs() if call == "list_refs" else r.missing([blob(b"x")[0]])
    assert r.bytes_received == received
    r.close()
