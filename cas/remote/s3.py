"""S3Remote: the Remote protocol over any S3-compatible object store (boto3).

Layout under ``s3://bucket/prefix`` (docs/format.md, "S3 layout")::

    <prefix>/cas-v1/packs/<pack-id>.pack   a pack stream (cas.pack), pack-id = BLAKE3 of it
    <prefix>/cas-v1/packs/<pack-id>.idx    its index: id, type, offset, length per frame
    <prefix>/cas-v1/refs                   every ref, one JSON object, changed by CAS

* Small objects travel in packs here too: a push is two PUTs per pack, whatever the
  number of objects in it. The ``.idx`` is written after its ``.pack``, so an object
  exists on the remote exactly when an index names it; a push cut between the two
  leaves an unindexed pack that is simply sent again (same bytes, same key).
* ``missing`` lists the indexes (one LIST per 1000 packs) and reads the ones this
  client has not seen (indexes are immutable, so they are cached in memory and, with
  ``cache_dir``, on disk). ``fetch`` reads only the needed frames with ranged GETs,
  coalescing neighbours: requests per pack, not per object.
* Refs are ONE object updated with conditional writes (``If-Match`` on its ETag, or
  ``If-None-Match: *`` to create it). One object rather than one per ref so that
  ``list_refs`` is a single GET, keeping a push or pull with nothing new at <= 2 requests;
  the price is that writers of *different* refs also race, which update_ref absorbs by
  re-reading and retrying (the compare is still on the one ref named). SeaweedFS 4.48 was
  checked to honour both conditions atomically (8 racing writers: exactly 1 wins).
* There is no server to verify uploads, so this client verifies what it sends (ids,
  closure, and the type of every reference, from the indexes) and what it receives
  (every frame is hashed on fetch, its type checked against what the walk expects).
"""

from __future__ import annotations

import json
import random
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import boto3
import botocore.exceptions
from botocore.config import Config

from cas import config, ingest, pack
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import (
    AuthError,
    BadRefTarget,
    CorruptObject,
    MalformedPack,
    ObjectNotFound,
    RefConflict,
    RemoteError,
    TransientRemoteError,
    UsageError,
)
from cas.refs import check_name
from cas.remote import bounded
from cas.remote.base import Expect, Progress, WireObject

LAYOUT = "cas-v1"
_IDX_MAGIC = b"CASIDX\x00"
_IDX_VERSION = 1
_IDX_HEAD = struct.Struct("<7sBI")  # magic, version, entry count
_IDX_ENTRY = struct.Struct("<32sBQQ")  # id, type, frame offset, frame length
#: Frames closer than this are read in one ranged GET (reading a gap beats a request).
SPAN_GAP = 1 << 20
SPAN_MAX = 64 << 20
_CAS_RETRIES = 50
#: Index GETs in flight at once when a fetch learns new packs (boto3 pools 10 connections).
INDEX_READS = 8
#: send_pack re-lists the indexes only when its view is older than this (seconds).
REFRESH_AGE = 10.0
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}


@dataclass(frozen=True)
class _Loc:
    pack: str
    type: ObjType
    offset: int
    length: int


class _PreconditionFailed(Exception):
    """A conditional write lost its race (HTTP 412)."""


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix/cas-v1/")."""
    if not url.startswith("s3://"):
        raise UsageError(f"not an s3 url: {url!r}", hint="use s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise UsageError(f"remote url {url!r} has no bucket", hint="use s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/{LAYOUT}/" if prefix else f"{LAYOUT}/"


def encode_index(frames: list[tuple[ObjectId, ObjType, int, int]]) -> bytes:
    body = _IDX_HEAD.pack(_IDX_MAGIC, _IDX_VERSION, len(frames)) + b"".join(
        _IDX_ENTRY.pack(oid.raw, int(t), off, n) for oid, t, off, n in frames
    )
    return body + blake3.blake3(body).digest()


def decode_index(data: bytes, pack_id: str) -> list[tuple[ObjectId, ObjType, int, int]]:
    body, digest = data[:-32], data[-32:]
    if len(data) < _IDX_HEAD.size + 32 or blake3.blake3(body).digest() != digest:
        raise CorruptObject(f"index of pack {pack_id[:12]} is corrupt")
    magic, version, count = _IDX_HEAD.unpack_from(body)
    if magic != _IDX_MAGIC or version != _IDX_VERSION:
        raise CorruptObject(f"index of pack {pack_id[:12]} has an unknown format")
    if len(body) != _IDX_HEAD.size + count * _IDX_ENTRY.size:
        raise CorruptObject(f"index of pack {pack_id[:12]} has the wrong length")
    return [
        (ObjectId(raw), ObjType(t), off, n)
        for raw, t, off, n in _IDX_ENTRY.iter_unpack(body[_IDX_HEAD.size :])
    ]


class S3Remote:
    """A remote in an S3 bucket (AWS, SeaweedFS, MinIO, ...)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        cache_dir: str | Path | None = None,
        compress_level: int = 3,
        **options: Any,
    ) -> None:
        """Explicit settings (the remote's config) win over the AWS_* variables."""
        unknown = sorted(k for k, v in options.items() if k != "create" and v is not None)
        if unknown:
            raise UsageError(f"unknown option(s) for an s3 remote: {', '.join(unknown)}")
        self.url = url
        self.bucket, self.root = parse_url(url)
        env = config.s3_settings()
        endpoint = endpoint or env["endpoint"]
        session = boto3.session.Session(profile_name=profile or env["profile"])
        self._s3 = session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region or env["region"] or "us-east-1",
            aws_access_key_id=access_key or env["access_key"],
            aws_secret_access_key=secret_key or env["secret_key"],
            aws_session_token=session_token or env["session_token"],
            config=Config(
                # Custom endpoints (SeaweedFS, MinIO) want path-style bucket addressing.
                s3={"addressing_style": "path" if endpoint else "auto"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
                # Our BLAKE3 ids already check every byte; CRCs would hash twice.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.compress_level = int(compress_level)  # options may arrive as strings
        self._cache = Path(cache_dir) if cache_dir else None
        self._index: dict[ObjectId, _Loc] = {}
        self._packs: set[str] = set()
        self._refreshed = -REFRESH_AGE - 1.0
        #: Requests made and bytes sent/received in bodies, for tests and summaries.
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._count = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Remote({self.url!r})"

    # -- plumbing ----------------------------------------------------------------------

    def _call(self, op: str, **kw: Any) -> Any:
        with self._count:  # index reads run on several threads (_refresh)
            self.requests += 1
        try:
            return getattr(self._s3, op)(**kw)
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if code == "PreconditionFailed" or status == 412:
                raise _PreconditionFailed() from exc
            raise self._error(code, status, str(err.get("Message", exc))) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise AuthError(
                f"{self.url}: no S3 credentials",
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the remote's access_key",
                url=self.url,
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise TransientRemoteError(f"{self.url}: {exc}", url=self.url) from exc

    def _error(self, code: str, status: int, message: str) -> RemoteError:
        where = f"{self.url}: {code or status}: {message}"
        if code in _AUTH_CODES or status in (401, 403):
            return AuthError(where, hint="check the S3 credentials", url=self.url)
        if code == "NoSuchBucket":
            return RemoteError(
                f"{self.url}: bucket {self.bucket!r} does not exist",
                hint="create the bucket first",
                url=self.url,
            )
        if code in _TRANSIENT_CODES or status >= 500:
            return TransientRemoteError(where, url=self.url)
        return RemoteError(where, url=self.url)

    def _get(self, key: str, limit: int, **kw: Any) -> tuple[bytes, str] | None:
        """The object ``key`` (its ETag too), refused past ``limit`` bytes: a bucket is
        a stranger too, and one object could be a terabyte."""
        got = self._call("get_object", Bucket=self.bucket, Key=self.root + key, **kw)
        if got is None:
            return None
        what = f"object {key}"
        try:
            if int(got.get("ContentLength") or 0) > limit:
                raise bounded.too_large(self.url, what, limit)
            body = bounded.read(iter(lambda: got["Body"].read(1 << 20), b""), limit, url=self.url, what=what)
            with self._count:
                self.bytes_received += len(body)
            return body, str(got.get("ETag", ""))
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise TransientRemoteError(f"{self.url}: read of {key} cut: {exc}") from exc

    def _put(self, key: str, body: bytes, **kw: Any) -> None:
        self.bytes_sent += len(body)
        self._call("put_object", Bucket=self.bucket, Key=self.root + key, Body=body, **kw)

    # -- the pack index ------------------------------------------------------------------

    def _refresh(self) -> None:
        """Learn every pack indexed on the remote since the last look.

        The new indexes are read INDEX_READS at a time: a new machine's first fetch
        reads one per pack ever pushed, and read one after the other they were most of
        a small clone's requests in sequence (docs/benchmarks.md, "A fleet"). They are
        added in listing order, so the first pack listed still names an object held
        twice."""
        self._refreshed = time.monotonic()
        new: list[str] = []
        token: str | None = None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            page = self._call(
                "list_objects_v2", Bucket=self.bucket, Prefix=self.root + "packs/", **kw
            )
            if page is None:
                break
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if name.endswith(".idx") and name[:-4] not in self._packs:
                    new.append(name[:-4])
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        if len(new) <= 1:
            self._add_indexes(new, [self._index_bytes(p) for p in new])
            return
        with ThreadPoolExecutor(INDEX_READS) as pool:
            # in windows: at most INDEX_READS indexes (each within MAX_INDEX) held undecoded
            for i in range(0, len(new), INDEX_READS):
                window = new[i : i + INDEX_READS]
                self._add_indexes(window, list(pool.map(self._index_bytes, window)))

    def _add_indexes(self, pack_ids: list[str], read: list[bytes | None]) -> None:
        for pack_id, data in zip(pack_ids, read, strict=True):
            if data is not None:
                self._add_index(pack_id, decode_index(data, pack_id))

    def _index_bytes(self, pack_id: str) -> bytes | None:
        """The index of ``pack_id``, from the cache dir or the bucket (None: gone)."""
        cached = self._cache / f"{pack_id}.idx" if self._cache else None
        if cached and cached.exists():
            return cached.read_bytes()
        got = self._get(f"packs/{pack_id}.idx", bounded.MAX_INDEX)
        if got is None:
            return None
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_bytes(got[0])
            tmp.replace(cached)
        return got[0]

    def _add_index(self, pack_id: str, frames: list[tuple[ObjectId, ObjType, int, int]]) -> None:
        for oid, otype, off, n in frames:
            self._index.setdefault(oid, _Loc(pack_id, otype, off, n))
        self._packs.add(pack_id)

    # -- the Remote protocol -------------------------------------------------------------

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        table, _ = self._read_refs()
        return {n: o for n, o in sorted(table.items()) if n.startswith(prefix)}

    def missing(self, oids: Sequence[ObjectId]) -> list[ObjectId]:
        held = self._held(oids)
        return [o for o in oids if o not in held]

    def _held(self, oids: Sequence[ObjectId]) -> dict[ObjectId, ObjType]:
        """The types of those of ``oids`` the bucket holds (:data:`cas.ingest.Held`)."""
        if any(o not in self._index for o in oids):
            self._refresh()
        return {o: self._index[o].type for o in oids if o in self._index}

    def send_pack(self, objects: Iterable[WireObject], progress: Progress | None = None) -> int:
        sent = count = 0
        for batch in pack.batches(objects):
            stale = time.monotonic() - self._refreshed > REFRESH_AGE
            if stale and any(o[0] not in self._index for o in batch):
                # Skip what others pushed since we last looked; callers usually asked
                # `missing` just before, so a fresh view is not listed again per pack.
                self._refresh()
            # ids and closure of the pack, before any byte of it is uploaded
            ingest.require(ingest.verify_objects(batch), self._held)
            fresh = [o for o in batch if o[0] not in self._index]
            if fresh:
                sent += self._upload(pack.encode_bytes(fresh, level=self.compress_level))
            count += len(batch)
            if progress:
                progress(count, sent)
        return sent

    def send_pack_bytes(self, data: bytes) -> int:
        """Upload one encoded pack as it is, after verifying it all (ids, framing, closure:
        :func:`cas.ingest.verify`, in memory that follows the pack's size)."""
        verified = ingest.verify(data, encode=False)
        ingest.require(verified.wanted, self._held)
        return self._upload(data) if verified.count else 0

    def _upload(self, data: bytes) -> int:
        frames = pack.frame_index(data)
        pack_id = blake3.blake3(data).hexdigest()
        self._put(f"packs/{pack_id}.pack", data)
        index = encode_index(frames)
        self._put(f"packs/{pack_id}.idx", index)  # the commit point: now the objects exist
        self._add_index(pack_id, frames)
        return len(data) + len(index)

    def fetch(
        self, oids: Sequence[ObjectId], progress: Progress | None = None, expect: Expect | None = None
    ) -> list[WireObject]:
        wanted = list(dict.fromkeys(oids))
        if any(o not in self._index for o in wanted):
            self._refresh()
        by_pack: dict[str, list[tuple[ObjectId, _Loc]]] = defaultdict(list)
        for oid in wanted:
            loc = self._index.get(oid)
            if loc is not None:
                by_pack[loc.pack].append((oid, loc))
        got: dict[ObjectId, WireObject] = {}
        received = 0
        for pack_id, locs in by_pack.items():
            for span in _spans(sorted(locs, key=lambda x: x[1].offset)):
                received += self._fetch_span(pack_id, span, got, expect or {})
                if progress:
                    progress(len(got), received)
        return [got[o] for o in wanted if o in got]

    def _fetch_span(
        self,
        pack_id: str,
        span: list[tuple[ObjectId, _Loc]],
        got: dict[ObjectId, WireObject],
        expect: Expect,
    ) -> int:
        for oid, loc in span:  # the index's word first: a mismatch costs no GET
            pack.check_expected(oid, loc.type, None, expect.get(oid), self.url)
            if loc.length > pack.MAX_FRAME:  # the index is the bucket's word: bounded too
                raise MalformedPack(
                    f"pack {pack_id[:12]}: the index gives {oid.short()} {loc.length} bytes, "
                    f"over the limit of {pack.MAX_FRAME}"
                )
        start = span[0][1].offset
        end = max(loc.offset + loc.length for _, loc in span)
        res = self._get(f"packs/{pack_id}.pack", end - start, Range=f"bytes={start}-{end - 1}")
        if res is None:
            raise RemoteError(f"{self.url}: pack {pack_id[:12]} is indexed but missing", url=self.url)
        data = memoryview(res[0])
        if len(data) != end - start:
            raise MalformedPack(f"pack {pack_id[:12]}: short read ({len(data)} of {end - start})")
        for oid, loc in span:
            rel = loc.offset - start
            obj = pack.decode_frame(  # checks the frame header again, then hashes the bytes
                data[rel : rel + loc.length], types=expect.get(oid), source=self.url
            )
            if obj[0] != oid:
                raise CorruptObject(f"pack {pack_id[:12]}: index and pack disagree on {oid.short()}")
            got[oid] = obj
        return len(data)

    # -- refs ----------------------------------------------------------------------------

    def _read_refs(self) -> tuple[dict[str, ObjectId], str | None]:
        got = self._get("refs", bounded.MAX_REFS)
        if got is None:
            return {}, None
        try:
            table = json.loads(got[0])["refs"]
            return {n: ObjectId.parse(h) for n, h in table.items()}, got[1]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            why = bounded.one_line(str(exc) or type(exc).__name__)
            raise CorruptObject(f"{self.url}: the refs object is corrupt: {why}") from exc

    def update_ref(self, name: str, new: ObjectId | None, expected: ObjectId | None) -> None:
        check_name(name)
        if new is not None:
            self._check_ref_target(name, new)
        for attempt in range(_CAS_RETRIES):
            table, etag = self._read_refs()
            current = table.get(name)
            if current != expected:
                raise RefConflict(
                    f"ref {name} changed on {self.url}: expected {_show(expected)}, "
                    f"found {_show(current)}",
                    hint="someone else updated it; fetch or pull, then retry",
                    ref=name,
                    expected=expected,
                    actual=current,
                )
            if current == new:
                return
            if new is None:
                del table[name]
            else:
                table[name] = new
            body = json.dumps(
                {"version": 1, "refs": {n: o.hex for n, o in sorted(table.items())}}
            ).encode()
            cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self._put("refs", body, **cond)
                return
            except _PreconditionFailed:
                # Another ref (or this one) moved under us: re-read and compare again.
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        raise TransientRemoteError(f"{self.url}: refs kept changing; gave up after {_CAS_RETRIES} tries")

    def _check_ref_target(self, name: str, new: ObjectId) -> None:
        """A ref names a commit or tag the bucket holds (docs/format.md, invariant 1)."""
        otype = self._held([new]).get(new)
        if otype is None:
            raise ObjectNotFound(f"cannot point {name} at {new.short()}: object not on {self.url}", oid=new)
        if otype not in (ObjType.COMMIT, ObjType.TAG):
            raise BadRefTarget(
                f"cannot point {name} at {new.short()}: a {otype.label}, not a commit or tag", oid=new
            )

    def close(self) -> None:
        self._s3.close()


def _spans(locs: list[tuple[ObjectId, _Loc]]) -> list[list[tuple[ObjectId, _Loc]]]:
    """Group frames (sorted by offset) into runs worth one ranged GET each."""
    spans: list[list[tuple[ObjectId, _Loc]]] = []
    for item in locs:
        loc = item[1]
        if spans:
            first, last = spans[-1][0][1], spans[-1][-1][1]
            end = last.offset + last.length
            if loc.offset - end <= SPAN_GAP and loc.offset + loc.length - first.offset <= SPAN_MAX:
                spans[-1].append(item)
                continue
        spans.append([item])
    return spans


def _show(value: ObjectId | None) -> str:
    return "nothing" if value is None else value.short()


__all__: list[str] = ["S3Remote", "parse_url", "encode_index", "decode_index"]
