"""HttpRemote: the Remote protocol over a ``cas serve`` server (httpx).

Wire protocol: docs/format.md, "HTTP protocol". Errors are mapped here, once: the server
answers every error as JSON ``{"error": <CasError class name>, "message": ...}``, and the
client re-raises the same class when it knows it (so a corrupt pack is a CorruptObject on
both sides); 401/403 become AuthError/Forbidden, 5xx and connection failures
TransientRemoteError, anything else a RemoteError carrying the URL.
"""

from __future__ import annotations

import io
import json
import ssl
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from cas import errors, pack
from cas.digest import DIGEST_SIZE, ObjectId
from cas.errors import (
    AuthError,
    CasError,
    DeadlineExceeded,
    Forbidden,
    RefConflict,
    RemoteError,
    TransientRemoteError,
    UsageError,
    shown,
)
from cas.remote import bounded
from cas.remote.base import Expect, Progress, WireObject
from cas.remote.deadline import Watchdog

#: Ids per missing/fetch request (32 bytes each: 2 MiB of ids).
ID_BATCH = 65_536
#: Total seconds one pack request (a fetch answer, a pushed pack) may take, by default
#: (remote option ``deadline=SECONDS``).
DEADLINE = 600.0
#: Total seconds any other request (refs, health, missing, a ref update) may take.
SMALL_DEADLINE = 60.0
#: Objects per fetch request: bounds what one dropped connection costs to redo.
FETCH_BATCH = 4_096
#: Connections one HttpRemote opens to its server at most (its pool; a request past them
#: waits for one to free): what a fetch or push keeps in flight (cas.sync.walk.PARALLEL),
#: so a clone counts at most this many against the server's per-peer cap (docs/server.md).
CONNECTIONS = 3
#: Request header naming the zstd level the client wants for fetched packs.
LEVEL_HEADER = "X-Cas-Pack-Level"
#: Request header saying this client reads a blob sent as several zstd frames (a
#: chunked blob's stored frames, cas.pack.Framed); the server's health says the same
#: of it (``pack_multi_frame``) before a push sends any.
FRAMES_HEADER = "X-Cas-Pack-Frames"


#: Answer chunks under this size are gathered into one buffer (:class:`_StreamReader`).
GATHER_BELOW = 4096


class _StreamReader(io.RawIOBase):
    """A file-like view of an httpx byte stream, for :func:`cas.pack.decode`.

    Holds the chunks as they came and joins what one read takes once: a frame's payload
    is copied one time on its way out (buffering into a bytearray and slicing out of it
    copied every received byte three times, with httpx's re-chunking a fourth).
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._parts: deque[bytes] = deque()  # unread chunks, the first from self._pos on
        self._pos = 0
        self._held = 0  # unread bytes in self._parts and self._small
        # Chunks under GATHER_BELOW bytes, gathered as they come: a server that trickles
        # its answer would otherwise cost ~40 bytes of Python objects per byte it sends.
        self._small = bytearray()
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        while n < 0 or self._held < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._held += len(nxt)
            if len(nxt) < GATHER_BELOW:  # a trickle's piece: gathered, not kept as an object
                self._small += nxt
                if len(self._small) < GATHER_BELOW:
                    continue
                nxt = bytes(self._small)
                self._small.clear()
            else:
                self._gathered()
            self._parts.append(nxt)
        self._gathered()
        out = self._take(self._held if n < 0 else min(n, self._held))
        self.consumed += len(out)
        return out

    def _gathered(self) -> None:
        if self._small:
            self._parts.append(bytes(self._small))
            self._small.clear()

    def _take(self, n: int) -> bytes:
        pieces: list[bytes | memoryview] = []
        self._held -= n
        while n:
            head = self._parts[0]
            end = min(len(head), self._pos + n)
            pieces.append(head if self._pos == 0 and end == len(head) else memoryview(head)[self._pos : end])
            n -= end - self._pos
            if end == len(head):
                self._parts.popleft()
                self._pos = 0
            else:
                self._pos = end
        if len(pieces) == 1:
            return bytes(pieces[0])  # the chunk itself when whole (bytes() of bytes is free)
        return b"".join(pieces)


class HttpRemote:
    """A remote served by ``cas serve`` at ``http(s)://host:port``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        verify: bool | str = True,
        timeout: float = 60.0,
        deadline: float | str = DEADLINE,
        compress_level: int | str | None = "auto",
        **options: Any,
    ) -> None:
        """``verify`` is True, False, or a CA bundle path (for self-signed servers).

        ``compress_level`` is the zstd level of packs in both directions (the server
        uses it for fetches too); ``None``/"none" sends raw bytes. "auto" means none
        for a loopback host, where zstd only costs CPU, and 1 otherwise (about 300 MB/s
        per core, halving typical artifacts).

        ``options`` meant for other transports (``create``) are ignored; any other
        unknown option is a UsageError, so a misspelt remote setting is not lost.
        """
        unknown = sorted(k for k, v in options.items() if k != "create" and v is not None)
        if unknown:
            raise UsageError(f"unknown option(s) for an http remote: {', '.join(unknown)}")
        tls: bool | ssl.SSLContext = True
        if isinstance(verify, str):
            if verify.lower() in ("false", "0", "no"):
                tls = False
            elif verify.lower() not in ("true", "1", "yes"):
                tls = ssl.create_default_context(cafile=verify)
        else:
            tls = verify
        self.url = url.rstrip("/")
        if self.url.lower().startswith("http://"):
            # Plain HTTP never speaks TLS here (every request goes to this base URL, and
            # no redirect is followed): a verifying context would load the CA bundle for
            # nothing, 30-50 ms of CPU in every process, a tenth of a fleet machine's
            # `cas clone` (issue 20).
            tls = False
        # Options from `cas remote add -o KEY=VALUE` arrive as strings.
        self.compress_level = _level(compress_level, self.url)
        timeout = float(timeout)
        #: Total seconds a pack request may take; other requests take SMALL_DEADLINE at most.
        self.deadline = _seconds(deadline, "deadline")
        self.small_deadline = min(self.deadline, SMALL_DEADLINE)
        self._watchdog = Watchdog()
        headers = {"User-Agent": "cas", "Accept-Encoding": "identity", LEVEL_HEADER: str(self.compress_level).lower(), FRAMES_HEADER: "multi"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url + "/v1",
            headers=headers,
            verify=tls,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS),
        )
        #: Requests made and bytes sent/received in bodies, for tests and summaries.
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._health: dict[str, Any] | None = None  # asked once, when first needed

    def __repr__(self) -> str:
        return f"HttpRemote({self.url!r})"

    # -- plumbing ----------------------------------------------------------------------

    @contextmanager
    def _exchange(self, method: str, path: str, deadline: float, **kw: Any) -> Iterator[httpx.Response]:
        """One request under a total ``deadline``, its status checked; the caller reads
        the body (bounded) inside the block. Every failure leaves as one CasError."""
        self.requests += 1
        with self._watchdog.armed(deadline) as fired:
            try:
                extensions = {"trace": self._watchdog.trace}
                with self._http.stream(method, path, extensions=extensions, **kw) as resp:
                    self._check(resp, method, path)
                    yield resp
            except Exception as exc:
                if fired.is_set():  # whatever the cut looked like, the deadline made it
                    raise DeadlineExceeded(
                        f"{self.url}: {method} /v1{path} got no complete answer within its "
                        f"deadline of {deadline:g} s",
                        hint="raise it with the remote option deadline=SECONDS",
                        url=self.url,
                    ) from exc
                if isinstance(exc, httpx.TransportError):
                    raise self._transport_error(exc) from exc
                raise

    def _check(self, resp: httpx.Response, method: str, path: str) -> None:
        """Refuse an error, a redirect or an encoded body, reading at most MAX_ERROR."""
        status = resp.status_code
        if status >= 400:
            body, whole = bounded.read_head(resp.iter_raw(), bounded.MAX_ERROR)
            raise self._error(resp, body if whole else b"")
        if 300 <= status < 400:
            # Not followed: a server sending the client's token elsewhere, or to a plain
            # http:// URL, is not one to trust; the user may point the remote there.
            where = shown(resp.headers.get("location", ""), 100)
            raise RemoteError(
                f"{self.url}: {method} /v1{path} was redirected (HTTP {status}) to {where}; "
                "cas does not follow redirects",
                hint="if that address is right, give it as the remote's URL",
                url=self.url,
            )
        encoding = resp.headers.get("content-encoding", "identity").lower()
        if encoding not in ("", "identity"):
            # Asked for identity: a compressed answer could inflate past every limit here.
            raise bounded.malformed(self.url, f"the answer to {method} /v1{path}", f"encoded as {encoding}")

    def _body(self, method: str, path: str, limit: int, deadline: float | None = None, **kw: Any) -> bytes:
        """The whole answer to one request, at most ``limit`` bytes."""
        what = f"the answer to {method} /v1{path}"
        with self._exchange(method, path, deadline or self.small_deadline, **kw) as resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise bounded.too_large(self.url, what, limit)
            data = bounded.read(resp.iter_raw(), limit, url=self.url, what=what)
        self.bytes_received += len(data)
        return data

    def _transport_error(self, exc: httpx.TransportError) -> RemoteError:
        text = bounded.one_line(str(exc))
        if "CERTIFICATE_VERIFY_FAILED" in text or "WRONG_VERSION_NUMBER" in text:
            # Not transient: retrying cannot make an untrusted certificate trusted.
            return RemoteError(
                f"{self.url}: TLS failed: {text}",
                hint="pass the server's certificate (remote option verify=/path/to/cert.pem)",
                url=self.url,
            )
        return TransientRemoteError(f"{self.url}: {type(exc).__name__}: {text}", url=self.url)

    def _error(self, resp: httpx.Response, data: bytes) -> CasError:
        """The CasError an error answer stands for; ``data`` is its body ("" when cut)."""
        try:
            body = bounded.json_object(data, url=self.url, what="an error answer")
        except RemoteError:
            body = {"message": data.decode("utf-8", "replace")}
        message = bounded.one_line(str(body.get("message") or resp.reason_phrase))
        name = str(body.get("error") or "")
        status = resp.status_code
        where = f"{self.url}: {message}"
        if status == 401:
            return AuthError(where, hint="check the remote's token", url=self.url)
        if status == 403:
            return Forbidden(where, hint="this token needs write scope to push", url=self.url)
        if status >= 500 and name in ("", "HTTPError", "RemoteError", "TransientRemoteError"):
            return TransientRemoteError(f"{where} (HTTP {status})", url=self.url)
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, CasError):
            fields = _fields(body)
            if issubclass(cls, RefConflict):
                fields = {k: _maybe_oid(v) for k, v in fields.items()}
            hint = body.get("hint")
            # The server's own class: a full disk there is StoreFull here, not a retry.
            return cls(where, hint=bounded.one_line(hint) if isinstance(hint, str) else None,
                       url=self.url, **fields)
        if status >= 500:
            return TransientRemoteError(f"{where} (HTTP {status})", url=self.url)
        return RemoteError(f"{where} (HTTP {status})", url=self.url)

    # -- the Remote protocol -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The server's health answer (versions and limits); needs no token."""
        return bounded.json_object(self._body("GET", "/health", bounded.MAX_SMALL), url=self.url,
                                   what="the answer to GET /v1/health")

    def _known_health(self) -> dict[str, Any]:
        """Health, asked once per remote ({} when it cannot be had)."""
        if self._health is None:
            try:
                self._health = self.health()
            except CasError:
                return {}
        return self._health

    @property
    def server_id(self) -> str | None:
        """The served store's own id (health's ``store_id``), asked once; None if the
        server has none. Part of this remote's identity (cas.provenance)."""
        sid = self._known_health().get("store_id")  # no id: the URL alone, pins fail closed
        return sid if isinstance(sid, str) else None

    @property
    def multi_frame(self) -> bool:
        """Whether the server reads blobs sent as several zstd frames (health says so)."""
        return self._known_health().get("pack_multi_frame") is True

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        what = "the answer to GET /v1/refs"
        data = self._body("GET", "/refs", bounded.MAX_REFS, params={"prefix": prefix})
        got = bounded.string_map(data, url=self.url, what=what)
        try:
            return {name: ObjectId.parse(hex_) for name, hex_ in got.items()}
        except CasError as exc:
            raise bounded.malformed(self.url, what, exc.message) from exc

    def missing(self, oids: Sequence[ObjectId]) -> list[ObjectId]:
        out: list[ObjectId] = []
        for i in range(0, len(oids), ID_BATCH):
            asked = oids[i : i + ID_BATCH]
            body = b"".join(o.raw for o in asked)
            # The answer is a subset of what was asked: never more bytes than the question.
            raw = self._body("POST", "/missing", len(body), content=body)
            got = [ObjectId(raw[j : j + DIGEST_SIZE]) for j in range(0, len(raw), DIGEST_SIZE)]
            if len(raw) % DIGEST_SIZE or not set(got) <= set(asked):
                raise bounded.malformed(self.url, "the answer to POST /v1/missing", "ids that were not asked about")
            out.extend(got)
        return out

    #: send_pack takes pack.Sized objects too (cas.remote.base.FrameSender).
    takes_stored_frames = True

    def send_pack(self, objects: Iterable[WireObject | pack.Sized], progress: Progress | None = None) -> int:
        sent = 0
        count = 0
        for batch in pack.batches(objects):
            # Health is asked (once) only when a batch holds a blob of several frames.
            multi = any(type(o) is pack.Framed and o.frames > 1 for o in batch) and self.multi_frame
            data = pack.encode_bytes(batch, level=self.compress_level, multi_frame=multi)
            self.send_pack_bytes(data)
            sent += len(data)
            count += len(batch)
            if progress:
                progress(count, sent)
        return sent

    def send_pack_bytes(self, data: bytes) -> int:
        """Upload one encoded pack as it is (the server verifies it all or nothing)."""
        self._body(
            "POST",
            "/packs",
            bounded.MAX_SMALL,
            self.deadline,
            content=_chunks(data),
            headers={"Content-Type": "application/x-cas-pack", "Content-Length": str(len(data))},
        )
        self.bytes_sent += len(data)
        return len(data)

    def fetch(
        self, oids: Sequence[ObjectId], progress: Progress | None = None, expect: Expect | None = None
    ) -> list[WireObject]:
        out: list[WireObject] = []
        received = 0
        for i in range(0, len(oids), FETCH_BATCH):
            body = b"".join(o.raw for o in oids[i : i + FETCH_BATCH])
            objs, n = self._fetch_one(body, set(oids[i : i + FETCH_BATCH]), expect)
            out.extend(objs)
            received += n
            if progress:
                progress(len(out), received)
        return out

    def _fetch_one(
        self, body: bytes, want: set[ObjectId], expect: Expect | None
    ) -> tuple[list[WireObject], int]:
        with self._exchange("POST", "/fetch", self.deadline, content=body) as resp:
            reader = _StreamReader(resp.iter_raw())
            # decode verifies every id, refuses any not asked for, asked for but sent
            # already, or not of the expected type (from its frame header, before its
            # payload is read) and decompresses in bounded steps (a hostile server's bomb
            # costs one step); a cut stream fails at the trailer, and bytes after the
            # trailer are refused unread.
            objs = pack.decode_all(
                reader, want=want, expect=expect, source=self.url  # type: ignore[arg-type]
            )
            self.bytes_received += reader.consumed
            return objs, reader.consumed

    def update_ref(self, name: str, new: ObjectId | None, expected: ObjectId | None) -> None:
        body = {"new": new.hex if new else None, "expected": expected.hex if expected else None}
        self._body("PUT", f"/refs/{quote(name, safe='/')}", bounded.MAX_SMALL, content=json.dumps(body))

    def close(self) -> None:
        self._http.close()


def _level(value: int | str | None, url: str) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        host = httpx.URL(url).host
        return None if host in ("127.0.0.1", "localhost", "::1") else 1
    try:
        return int(value)
    except ValueError as exc:
        raise UsageError(f"compress_level must be a number, none or auto, not {value!r}") from exc


def _seconds(value: float | str, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError as exc:
        raise UsageError(f"{name} must be a number of seconds, not {value!r}") from exc
    if not seconds > 0:
        raise UsageError(f"{name} must be a positive number of seconds, not {value!r}")
    return seconds


def _fields(body: dict[str, Any]) -> dict[str, str | None]:
    """The structured fields of a server's error (ref, expected, actual, oid...): only
    short strings under plain names, so that no answer sets ``exit_code`` or the like."""
    return {
        k: bounded.one_line(v) if isinstance(v, str) else None
        for k, v in body.items()
        if k in _FIELDS and (v is None or isinstance(v, str))
    }


#: Error fields a server may send back (those the server's CasErrors carry).
_FIELDS = frozenset({"ref", "expected", "actual", "oid"})


def _chunks(data: bytes, size: int = 1 << 20) -> Iterator[memoryview]:
    """A body as 1 MiB views: handing httpx one large bytes object makes its socket
    writer re-slice (copy) the remainder after every send, which is quadratic (a 300 MiB
    PUT ran at 35 MB/s that way, 150+ MB/s in chunks)."""
    view = memoryview(data)
    for i in range(0, len(data), size):
        yield view[i : i + size]


def _maybe_oid(value: Any) -> Any:
    if isinstance(value, str) and len(value) == 2 * DIGEST_SIZE:
        try:
            return ObjectId.parse(value)
        except CasError:
            return value
    return value
